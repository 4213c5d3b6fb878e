//! LLM token budgets end to end: the real tollgate binary in front of a mock OpenAI-style and
//! Anthropic-style model API ([`LlmUpstream`]). Exact debits read from JSON answers and SSE
//! streams (and custom JSON paths), the `RateLimit` token items, the refusal once a minute or
//! daily budget is spent, tenant overrides, one budget for two replicas on Redis,
//! `tollgate_llm_tokens_total` and its labels (the model's cardinality cap), streams that still
//! pass event by event, compressed answers left unread, shadow tiers, the rate-limit decision
//! count, and the validation of `tokens:`.

mod common;

use common::llm::{anthropic_stream, gunzipped, openai_stream, TEXT};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOKENS: &str = "tollgate_llm_tokens_total";
const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";

/// The mock behind group `openai`, route `llm` on `/` with `tokens: {}`; tenants named by a
/// trusted `x-tenant-id` header: `acme` of tier `llm` (`tier`), allowlisted as a label.
fn llm_config(llm: SocketAddr, tier: &str) -> Config {
    Config::new()
        .upstream(Group::new("openai", [llm]))
        .route(
            Route::prefix("/")
                .name("llm")
                .to("openai")
                .set("tokens", "{}"),
        )
        .identity("order", "[tenant_header]")
        .identity("trust_tenant_header", "true")
        .tier("llm", tier)
        .set("tenants", "acme", "{ tier: llm }")
        .observability("tenant_label_allowlist", "[acme]")
        // Failures print the proxy's log: keep it to tollgate's own lines.
        .observability("access_log", "{ enabled: false }")
}

/// POST `body` as JSON to `path` through tollgate, as `tenant` ("" for an anonymous caller).
async fn ask(tg: &Tollgate, tenant: &str, path: &str, body: &Value) -> Got {
    tg.send(request(tg, tenant, path, body)).await
}

/// [`ask`]'s request, to send and stream by hand.
fn request(tg: &Tollgate, tenant: &str, path: &str, body: &Value) -> reqwest::RequestBuilder {
    let mut req = tg
        .req(reqwest::Method::POST, path)
        .header("content-type", "application/json")
        .body(body.to_string());
    if !tenant.is_empty() {
        req = req.header("x-tenant-id", tenant);
    }
    req
}

/// A chat request for `model` (`stream`: an SSE answer with its usage chunk).
fn chat(model: &str, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// An Anthropic Messages request for `model`.
fn message(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}],
    })
}

/// The parameters of item `name` in a structured-field list header such as `RateLimit`
/// (`"burst";r=99;t=1, "tokens";r=40;t=36`); `None` when the item is absent.
fn item(header: &str, name: &str) -> Option<BTreeMap<String, u64>> {
    let quoted = format!("\"{name}\"");
    header.split(',').map(str::trim).find_map(|it| {
        let mut parts = it.split(';');
        (parts.next()? == quoted).then(|| {
            parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.parse().expect("integer parameter")))
                .collect()
        })
    })
}

/// Parameter `param` of item `name` of header `header` of `got` (panics when absent).
#[track_caller]
fn param(got: &Got, header: &str, name: &str, param: &str) -> u64 {
    let value = got.header(header);
    item(value, name)
        .and_then(|i| i.get(param).copied())
        .unwrap_or_else(|| panic!("no {name};{param} in {header}: {value:?} of {got:?}"))
}

/// Tokens left in the minute budget as `RateLimit` tells it (`"tokens";r=`).
#[track_caller]
fn left(got: &Got) -> u64 {
    param(got, "ratelimit", "tokens", "r")
}

/// Assert the minute budget `RateLimit` tells (`"tokens";r=`) is `want`, give or take what a
/// bucket of `per_minute` tokens refilled since `since` (taken just before the first debited
/// request was sent): exact when the test runs quickly, and still right when a loaded machine
/// makes it slow.
#[track_caller]
fn assert_left(got: &Got, want: u64, per_minute: u64, since: Instant) {
    let refill = (since.elapsed().as_secs_f64() * per_minute as f64 / 60.0).floor() as u64;
    let r = left(got);
    assert!(
        (want..=want + refill).contains(&r),
        "tokens left {r}, want {want} (+ up to {refill} refilled) in {got:?}"
    );
}

/// `tollgate_llm_tokens_total` of route `llm`, group `openai`, for `tenant` and `model`.
async fn expect_tokens(tg: &Tollgate, tenant: &str, model: &str, input: f64, output: f64) {
    for (kind, want) in [("input", input), ("output", output)] {
        let labels = [
            ("route", "llm"),
            ("tenant", tenant),
            ("group", "openai"),
            ("model", model),
            ("type", kind),
        ];
        tg.expect_metric(TOKENS, &labels, want).await;
    }
}

/// Seconds from now to the next 00:00 UTC.
fn secs_to_utc_midnight() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    86_400 - now.as_secs() % 86_400
}

#[tokio::test]
async fn openai_json_answers_debit_prompt_plus_completion_tokens_and_refuse_once_spent() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(20, 40);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .start()
    .await;
    let body = chat("gpt-4o-mini", false);

    let t0 = Instant::now();
    let first = ask(&tg, "acme", CHAT, &body).await;
    first.assert_status(200);
    assert_eq!(first.json()["usage"]["prompt_tokens"], 20, "{first:?}");
    first.assert_header(
        "ratelimit-policy",
        "\"burst\";q=100;w=1, \"tokens\";q=100;w=60",
    );
    assert_eq!(item(first.header("ratelimit"), "burst").unwrap()["r"], 99);
    // The budget before this request's debit: whole, and full now.
    assert_eq!(left(&first), 100);
    assert_eq!(param(&first, "ratelimit", "tokens", "t"), 0);
    expect_tokens(&tg, "acme", "gpt-4o-mini", 20.0, 40.0).await;

    let second = ask(&tg, "acme", CHAT, &body).await;
    second.assert_status(200);
    assert_left(&second, 40, 100, t0);
    // 60 tokens of a 100/min bucket: full again in 36 s.
    let t = param(&second, "ratelimit", "tokens", "t");
    assert!((35..=36).contains(&t), "t={t} in {second:?}");
    expect_tokens(&tg, "acme", "gpt-4o-mini", 40.0, 80.0).await;

    // Now 20 in debt: one token back takes (20 + 1) * 0.6 s = 12.6 s from the debit.
    let third = ask(&tg, "acme", CHAT, &body).await;
    third.assert_status(429);
    let retry: u64 = third.header("retry-after").parse().unwrap();
    assert!((12..=13).contains(&retry), "{third:?}");
    assert_eq!(third.json()["retry_after"], retry);
    assert_eq!(third.json()["policy"], "tokens");
    assert_eq!(third.json()["budget"], "minute");
    assert_eq!(left(&third), 0);
    assert_eq!(
        llm.count(),
        2,
        "the refused request never reached the model"
    );
    let seen = llm.requests();
    assert_eq!(
        seen[0].model(),
        "gpt-4o-mini",
        "the body reached the model intact"
    );
    assert_eq!(seen[1].body, body);
    // A refusal costs nothing.
    expect_tokens(&tg, "acme", "gpt-4o-mini", 40.0, 80.0).await;
}

#[tokio::test]
async fn a_spent_budget_is_refused_with_retry_after_ratelimit_fields_and_a_json_body() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(30, 30);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 50 }",
    )
    .start()
    .await;
    let body = chat("gpt-4o", false);
    // Post-paid: 50 left, so the 60-token answer passes, and leaves the caller 10 in debt.
    let first = ask(&tg, "acme", CHAT, &body).await;
    first.assert_status(200);
    assert_eq!(left(&first), 50);
    expect_tokens(&tg, "acme", "gpt-4o", 30.0, 30.0).await;

    let refused = ask(&tg, "acme", CHAT, &body).await;
    refused
        .assert_status(429)
        .assert_header("content-type", "application/json");
    // 50/min: 1.2 s a token; (10 + 1) tokens to be back at one: 13.2 s from the debit.
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((13..=14).contains(&retry), "{refused:?}");
    let policy = refused.header("ratelimit-policy");
    assert_eq!(
        item(policy, "tokens").unwrap(),
        BTreeMap::from([("q".into(), 50), ("w".into(), 60)]),
        "{refused:?}"
    );
    assert!(item(policy, "burst").is_some(), "{refused:?}");
    assert_eq!(left(&refused), 0);
    // Full again once the 60 tokens have refilled: 72 s.
    let t = param(&refused, "ratelimit", "tokens", "t");
    assert!((71..=72).contains(&t), "t={t} in {refused:?}");
    assert!(item(refused.header("ratelimit"), "burst").is_some());

    let j = refused.json();
    assert_eq!(j["error"], "token_budget_exhausted");
    assert_eq!(j["status"], 429);
    assert_eq!(j["policy"], "tokens");
    assert_eq!(j["budget"], "minute");
    assert_eq!(j["tier"], "llm");
    assert_eq!(j["retry_after"], retry);
    let id = refused.header("x-request-id");
    assert!(!id.is_empty(), "{refused:?}");
    assert_eq!(j["request_id"], id);

    assert_eq!(
        llm.count(),
        1,
        "the refused request never reached the model"
    );
    let limited = [
        ("tier", "llm"),
        ("policy", "tokens"),
        ("decision", "limited"),
    ];
    tg.expect_metric("tollgate_ratelimit_decisions_total", &limited, 1.0)
        .await;
    // Another tenant's budget is its own.
    let other = ask(&tg, "globex", CHAT, &body).await;
    other.assert_status(200);
}

#[tokio::test]
async fn each_request_counts_one_rate_limit_decision() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(20, 40);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .start()
    .await;
    for _ in 0..2 {
        ask(&tg, "acme", CHAT, &chat("gpt-4o", false))
            .await
            .assert_status(200);
    }
    expect_tokens(&tg, "acme", "gpt-4o", 40.0, 80.0).await;
    let allowed = [("tier", "llm"), ("policy", "none"), ("decision", "allowed")];
    assert_eq!(
        tg.metric("tollgate_ratelimit_decisions_total", &allowed)
            .await,
        Some(2.0),
        "two requests, two decisions: {:#?}",
        decisions(&tg).await
    );
}

/// The `tollgate_ratelimit_decisions_total` sample lines of `tg`.
async fn decisions(tg: &Tollgate) -> Vec<String> {
    let text = tg.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("tollgate_ratelimit_decisions_total"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_shadow_tier_passes_an_overspent_caller_and_counts_it() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(30, 30);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 50, shadow: true }",
    )
    .start()
    .await;
    let first = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
    assert_eq!(left(&first), 50);
    expect_tokens(&tg, "acme", "gpt-4o", 30.0, 30.0).await;
    for n in 2..=3 {
        let over = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
        over.assert_status(200).assert_no_header("retry-after");
        assert_eq!(left(&over), 0, "{over:?}");
        expect_tokens(&tg, "acme", "gpt-4o", 30.0 * n as f64, 30.0 * n as f64).await;
    }
    let shadow = [
        ("tier", "llm"),
        ("policy", "tokens"),
        ("decision", "shadow_limited"),
    ];
    tg.expect_metric("tollgate_ratelimit_decisions_total", &shadow, 2.0)
        .await;
    assert_eq!(llm.count(), 3);
}

#[tokio::test]
async fn a_route_without_request_limits_still_knows_the_tenant() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(30, 30);
    let tg = Config::new()
        .upstream(Group::new("openai", [llm.addr()]))
        .route(
            Route::prefix("/")
                .name("llm")
                .to("openai")
                .set("tokens", "{}")
                .rate_limit("{ enabled: false }"),
        )
        .identity("order", "[tenant_header]")
        .identity("trust_tenant_header", "true")
        .tier("llm", "{ rps: 100, burst: 100, tokens_per_minute: 50 }")
        .set("tenants", "acme", "{ tier: llm }")
        .observability("tenant_label_allowlist", "[acme]")
        .start()
        .await;
    ask(&tg, "acme", CHAT, &chat("gpt-4o", false))
        .await
        .assert_status(200);
    let series = token_series(&tg, 2).await;
    assert!(
        series.iter().all(|l| l.contains("tenant=\"acme\"")),
        "an allowlisted tenant is labelled as itself: {series:#?}"
    );
}

#[tokio::test]
async fn an_openai_stream_is_debited_from_its_usage_chunk() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(12, 34);
    let t0 = Instant::now();
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .start()
    .await;
    let first = ask(&tg, "acme", CHAT, &chat("gpt-4o", true)).await;
    first
        .assert_status(200)
        .assert_header("content-type", "text/event-stream");
    let want = openai_stream("gpt-4o", TEXT, Tokens::new(12, 34), true);
    assert_eq!(first.text(), want.concat(), "the stream passes unchanged");
    assert_eq!(left(&first), 100);
    expect_tokens(&tg, "acme", "gpt-4o", 12.0, 34.0).await;

    let second = ask(&tg, "acme", CHAT, &chat("gpt-4o", true)).await;
    second.assert_status(200);
    assert_left(&second, 100 - (12 + 34), 100, t0);
    expect_tokens(&tg, "acme", "gpt-4o", 24.0, 68.0).await;
}

#[tokio::test]
async fn anthropic_json_answers_debit_input_plus_output_tokens() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(25, 15);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .start()
    .await;
    let model = "claude-3-5-haiku-latest";
    let t0 = Instant::now();
    let first = ask(&tg, "acme", MESSAGES, &message(model, false)).await;
    first.assert_status(200);
    assert_eq!(first.json()["usage"]["input_tokens"], 25, "{first:?}");
    assert_eq!(left(&first), 100);
    expect_tokens(&tg, "acme", model, 25.0, 15.0).await;
    let second = ask(&tg, "acme", MESSAGES, &message(model, false)).await;
    assert_left(&second, 100 - (25 + 15), 100, t0);
    expect_tokens(&tg, "acme", model, 50.0, 30.0).await;
}

#[tokio::test]
async fn an_anthropic_stream_is_debited_from_message_start_and_message_delta() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(25, 15);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .start()
    .await;
    let model = "claude-3-5-sonnet-latest";
    let t0 = Instant::now();
    let first = ask(&tg, "acme", MESSAGES, &message(model, true)).await;
    first
        .assert_status(200)
        .assert_header("content-type", "text/event-stream");
    let want = anthropic_stream(model, TEXT, Tokens::new(25, 15));
    assert_eq!(first.text(), want.concat(), "the stream passes unchanged");
    assert_eq!(left(&first), 100);
    // message_start says 1 output token, message_delta the cumulative 15: 15, not 16.
    expect_tokens(&tg, "acme", model, 25.0, 15.0).await;
    let second = ask(&tg, "acme", MESSAGES, &message(model, true)).await;
    assert_left(&second, 100 - (25 + 15), 100, t0);
    expect_tokens(&tg, "acme", model, 50.0, 30.0).await;
}

#[tokio::test]
async fn custom_json_paths_read_other_shapes_whole_and_streamed() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(7, 8);
    let tg = Config::new()
        .upstream(Group::new("openai", [llm.addr()]))
        .route(
            Route::prefix("/custom")
                .name("llm")
                .to("openai")
                .set("tokens", "{ input: meta.in, output: meta.out }"),
        )
        .identity("order", "[tenant_header]")
        .identity("trust_tenant_header", "true")
        .tier("llm", "{ rps: 100, burst: 100, tokens_per_minute: 100 }")
        .set("tenants", "acme", "{ tier: llm }")
        .observability("tenant_label_allowlist", "[acme]")
        .start()
        .await;
    let body = json!({"model": "house-model", "prompt": "hi"});
    let t0 = Instant::now();
    let first = ask(&tg, "acme", "/custom", &body).await;
    first.assert_status(200);
    assert_eq!(first.json()["meta"]["in"], 7, "{first:?}");
    assert_eq!(left(&first), 100);
    expect_tokens(&tg, "acme", "house-model", 7.0, 8.0).await;

    let streamed = json!({"model": "house-model", "prompt": "hi", "stream": true});
    let second = ask(&tg, "acme", "/custom", &streamed).await;
    second
        .assert_status(200)
        .assert_header("content-type", "text/event-stream");
    assert_left(&second, 100 - (7 + 8), 100, t0);
    expect_tokens(&tg, "acme", "house-model", 14.0, 16.0).await;

    let third = ask(&tg, "acme", "/custom", &body).await;
    assert_left(&third, 100 - 2 * 15, 100, t0);
}

#[tokio::test]
async fn the_daily_budget_refuses_until_utc_midnight() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(20, 40);
    let tg = llm_config(llm.addr(), "{ rps: 100, burst: 100, tokens_per_day: 50 }")
        .start()
        .await;
    let body = chat("gpt-4o-mini", false);
    let first = ask(&tg, "acme", CHAT, &body).await;
    first.assert_status(200).assert_header(
        "ratelimit-policy",
        "\"burst\";q=100;w=1, \"tokens-daily\";q=50;w=86400",
    );
    assert!(
        item(first.header("ratelimit"), "tokens").is_none(),
        "no minute budget: {first:?}"
    );
    assert_eq!(param(&first, "ratelimit", "tokens-daily", "r"), 50);
    let t = param(&first, "ratelimit", "tokens-daily", "t");
    assert!(
        t.abs_diff(secs_to_utc_midnight()) <= 2,
        "t={t}, midnight in {}",
        secs_to_utc_midnight()
    );
    expect_tokens(&tg, "acme", "gpt-4o-mini", 20.0, 40.0).await;

    let refused = ask(&tg, "acme", CHAT, &body).await;
    refused.assert_status(429);
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    let midnight = secs_to_utc_midnight();
    assert!(
        retry.abs_diff(midnight) <= 2,
        "Retry-After {retry}, midnight in {midnight}"
    );
    let j = refused.json();
    assert_eq!(j["error"], "token_budget_exhausted");
    assert_eq!(j["policy"], "tokens");
    assert_eq!(j["budget"], "day");
    assert_eq!(j["retry_after"], retry);
    assert_eq!(param(&refused, "ratelimit", "tokens-daily", "r"), 0);
    assert_eq!(llm.count(), 1);
}

#[tokio::test]
async fn tenant_overrides_replace_the_tiers_token_budgets() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(20, 40);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .set(
        "tenants",
        "bigco",
        "{ tier: llm, tokens_per_minute: 1000, tokens_per_day: 5000 }",
    )
    .start()
    .await;
    let body = chat("gpt-4o-mini", false);

    let big_t0 = Instant::now();
    let big = ask(&tg, "bigco", CHAT, &body).await;
    big.assert_status(200).assert_header(
        "ratelimit-policy",
        "\"burst\";q=100;w=1, \"tokens\";q=1000;w=60, \"tokens-daily\";q=5000;w=86400",
    );
    assert_eq!(left(&big), 1000);
    assert_eq!(param(&big, "ratelimit", "tokens-daily", "r"), 5000);
    expect_tokens(&tg, "other", "gpt-4o-mini", 20.0, 40.0).await;
    let big = ask(&tg, "bigco", CHAT, &body).await;
    assert_left(&big, 940, 1000, big_t0);
    assert_eq!(
        param(&big, "ratelimit", "tokens-daily", "r"),
        4940,
        "a day does not refill"
    );
    expect_tokens(&tg, "other", "gpt-4o-mini", 40.0, 80.0).await;
    for _ in 0..3 {
        ask(&tg, "bigco", CHAT, &body).await.assert_status(200);
    }
    expect_tokens(&tg, "other", "gpt-4o-mini", 100.0, 200.0).await;

    // The tier's own tenant keeps the tier's budget (and has no daily one).
    let acme_t0 = Instant::now();
    let acme = ask(&tg, "acme", CHAT, &body).await;
    acme.assert_status(200).assert_header(
        "ratelimit-policy",
        "\"burst\";q=100;w=1, \"tokens\";q=100;w=60",
    );
    assert_eq!(left(&acme), 100);
    expect_tokens(&tg, "acme", "gpt-4o-mini", 20.0, 40.0).await;
    assert_left(&ask(&tg, "acme", CHAT, &body).await, 40, 100, acme_t0);
    expect_tokens(&tg, "acme", "gpt-4o-mini", 40.0, 80.0).await;
    ask(&tg, "acme", CHAT, &body).await.assert_status(429);
    // bigco spent 300 of its 1000.
    let big = ask(&tg, "bigco", CHAT, &body).await;
    assert_left(&big, 700, 1000, big_t0);
    assert_eq!(param(&big, "ratelimit", "tokens-daily", "r"), 4700);
}

/// `redis:` for one server, with short timeouts and a fast heartbeat.
fn single_redis(url: &str) -> String {
    format!(
        "redis:\n  url: {}\n  command_timeout: 200ms\n  heartbeat_interval: 200ms\n  backoff: 300ms\n",
        serde_json::to_string(url).unwrap()
    )
}

/// Wait until the fleet's budget of `tenant` in Redis records `used` tokens.
async fn expect_redis_used(redis: &RedisServer, tenant: &str, used: u64) {
    let key = format!("tollgate:{{t:{tenant}}}:tokens");
    let ok = eventually(Duration::from_secs(10), || async {
        redis.cli(&["HGET", &key, "u"]) == used.to_string()
    })
    .await;
    let got = redis.cli(&["HGET", &key, "u"]);
    assert!(ok, "{key} u never became {used} (last {got:?})");
}

#[tokio::test]
async fn two_replicas_on_redis_spend_one_budget() {
    let redis = RedisServer::start();
    let llm = LlmUpstream::start().await;
    llm.set_usage(20, 40);
    let cfg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .rate_limit("store", "redis")
    .yaml(&single_redis(&redis.url()));
    let (a, b) = tokio::join!(cfg.start(), cfg.start());
    for tg in [&a, &b] {
        tg.expect_metric("tollgate_redis_up", &[], 1.0).await;
    }
    let body = chat("gpt-4o", false);

    let t0 = Instant::now();
    let on_a = ask(&a, "acme", CHAT, &body).await;
    on_a.assert_status(200);
    assert_eq!(left(&on_a), 100);
    expect_redis_used(&redis, "acme", 60).await;

    // B sees A's debit, and debits the same budget.
    let on_b = ask(&b, "acme", CHAT, &body).await;
    on_b.assert_status(200);
    assert_left(&on_b, 40, 100, t0);
    expect_redis_used(&redis, "acme", 120).await;

    // A sees B's debit: 20 in debt.
    let refused = ask(&a, "acme", CHAT, &body).await;
    refused.assert_status(429);
    assert_eq!(refused.json()["budget"], "minute");
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((12..=13).contains(&retry), "Retry-After {retry}");
    assert_eq!(llm.count(), 2);

    // Each replica counts the tokens of its own answers.
    expect_tokens(&a, "acme", "gpt-4o", 20.0, 40.0).await;
    expect_tokens(&b, "acme", "gpt-4o", 20.0, 40.0).await;
    let ttl: i64 = redis
        .cli(&["TTL", "tollgate:{t:acme}:tokens"])
        .parse()
        .unwrap();
    assert!(ttl > 0, "the budget key expires (ttl {ttl})");
}

#[tokio::test]
async fn token_metrics_are_labelled_by_route_tenant_group_and_model() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(3, 4);
    // No token budget: usage is still counted.
    let tg = llm_config(llm.addr(), "{ rps: 100, burst: 100 }")
        .start()
        .await;
    let r = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
    r.assert_status(200);
    assert!(
        item(r.header("ratelimit"), "tokens").is_none(),
        "no token budget, no token item: {r:?}"
    );
    expect_tokens(&tg, "acme", "gpt-4o", 3.0, 4.0).await;
    // A tenant that is not allowlisted, and an anonymous caller.
    ask(&tg, "globex", CHAT, &chat("gpt-4o", false)).await;
    expect_tokens(&tg, "other", "gpt-4o", 3.0, 4.0).await;
    ask(&tg, "", CHAT, &chat("gpt-4o", false)).await;
    expect_tokens(&tg, "none", "gpt-4o", 3.0, 4.0).await;
    // No model in the body; a "model" nested in the messages does not count.
    let nested = json!({"messages": [{"role": "user", "content": "x", "model": "nested"}]});
    ask(&tg, "acme", CHAT, &nested).await.assert_status(200);
    expect_tokens(&tg, "acme", "none", 3.0, 4.0).await;
    // The model after a long messages array is still found.
    let late = json!({
        "messages": [{"role": "user", "content": "y".repeat(4000)}],
        "model": "gpt-4o-mini",
    });
    ask(&tg, "acme", CHAT, &late).await.assert_status(200);
    expect_tokens(&tg, "acme", "gpt-4o-mini", 3.0, 4.0).await;
    let text = tg.metrics().await;
    assert!(!text.contains("model=\"nested\""), "{text}");
}

/// The `tollgate_llm_tokens_total` sample lines of `tg`, once there are `n` of them.
async fn token_series(tg: &Tollgate, n: usize) -> Vec<String> {
    let lines = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(TOKENS))
            .map(str::to_string)
            .collect()
    };
    eventually(Duration::from_secs(10), || async {
        lines(tg.metrics().await).len() >= n
    })
    .await;
    lines(tg.metrics().await)
}

#[tokio::test]
async fn a_model_name_unfit_for_a_label_counts_as_other() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(3, 4);
    let tg = llm_config(llm.addr(), "{ rps: 100, burst: 100 }")
        .start()
        .await;
    // A name a label must not carry (quotes, a newline), and one over 64 characters.
    for model in ["gpt 4o\"} 1\nevil", &"m".repeat(65)] {
        ask(&tg, "acme", CHAT, &chat(model, false))
            .await
            .assert_status(200);
    }
    let series = token_series(&tg, 2).await;
    assert!(
        series.iter().all(|l| l.contains("model=\"other\"")),
        "present but unfit model names are `other` (`none` is for no model): {series:#?}"
    );
    expect_tokens(&tg, "acme", "other", 6.0, 8.0).await;
}

#[tokio::test]
async fn model_labels_are_capped_at_fifty_names_then_other() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(1, 2);
    let tg = llm_config(llm.addr(), "{ rps: 1000, burst: 1000 }")
        .start()
        .await;
    for i in 0..53 {
        ask(&tg, "acme", CHAT, &chat(&format!("model-{i:02}"), false))
            .await
            .assert_status(200);
    }
    // A name seen before the cap keeps its own label.
    ask(&tg, "acme", CHAT, &chat("model-00", false))
        .await
        .assert_status(200);
    expect_tokens(&tg, "acme", "model-00", 2.0, 4.0).await;
    expect_tokens(&tg, "acme", "model-49", 1.0, 2.0).await;
    expect_tokens(&tg, "acme", "other", 3.0, 6.0).await;
    let text = tg.metrics().await;
    let models: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| l.starts_with(TOKENS))
        .filter_map(|l| l.split("model=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(models.len(), 51, "50 names and other: {models:?}");
    for late in ["model-50", "model-51", "model-52"] {
        assert!(!models.contains(late), "{late} got its own label");
    }
}

#[tokio::test]
async fn a_stream_passes_event_by_event_and_is_debited_when_it_ends() {
    let llm = LlmUpstream::start().await;
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 1000 }",
    )
    .start()
    .await;
    let tx = llm.hold_next_stream();
    let t0 = Instant::now();
    let frames = openai_stream("gpt-4o", "one two three", Tokens::new(111, 222), true);
    tx.send(frames[0].clone()).unwrap();
    let resp = request(&tg, "acme", CHAT, &chat("gpt-4o", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            tx.send(frame.clone()).unwrap();
        }
        let want: String = frames[..=i].concat();
        tokio::time::timeout(Duration::from_secs(10), async {
            while seen.len() < want.len() {
                let chunk = body.next().await.expect("stream ended early").unwrap();
                seen.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .unwrap_or_else(|_| panic!("frame {i} did not arrive while the stream was open: {seen:?}"));
        assert_eq!(seen, want, "frame {i}");
        if i == 0 {
            // The stream is open: nothing is counted yet.
            assert_eq!(tg.metric(TOKENS, &[("type", "input")]).await, None);
        }
    }
    drop(tx);
    assert!(
        body.next().await.is_none(),
        "the stream ends with the upstream's"
    );
    expect_tokens(&tg, "acme", "gpt-4o", 111.0, 222.0).await;
    let next = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
    assert_left(&next, 1000 - 333, 1000, t0);
}

/// Read `body` into `seen` until `seen` holds `want`.
async fn read_until(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> + Unpin),
    seen: &mut String,
    want: &str,
) {
    while !seen.contains(want) {
        let chunk = body.next().await.expect("stream ended early").unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// Median time from the mock writing a frame to the client reading it, over `n` frames of a
/// held stream read from `url`.
async fn median_event_latency(llm: &LlmUpstream, url: &str, n: usize) -> Duration {
    let tx = llm.hold_next_stream();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    tx.send("data: start\n\n".into()).unwrap();
    let resp = client
        .post(url)
        .header("x-tenant-id", "acme")
        .header("content-type", "application/json")
        .body(chat("gpt-4o", true).to_string())
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    read_until(&mut body, &mut seen, "data: start\n\n").await;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let frame = format!("data: {{\"i\":{i}}}\n\n");
        let sent = Instant::now();
        tx.send(frame.clone()).unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            read_until(&mut body, &mut seen, &frame),
        )
        .await
        .expect("event while the stream is open");
        times.push(sent.elapsed());
    }
    drop(tx);
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn reading_usage_adds_under_a_millisecond_per_event() {
    let llm = LlmUpstream::start().await;
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 1000 }",
    )
    .start()
    .await;
    let direct = median_event_latency(&llm, &format!("http://{}{CHAT}", llm.addr()), 200).await;
    let through = median_event_latency(&llm, &tg.url(CHAT), 200).await;
    assert!(
        through < direct + Duration::from_millis(1),
        "median per event: {through:?} through tollgate, {direct:?} direct"
    );
}

#[tokio::test]
async fn a_compressed_answer_is_passed_on_unread_and_not_debited() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(20, 10);
    llm.set_gzip(true);
    let tg = llm_config(
        llm.addr(),
        "{ rps: 100, burst: 100, tokens_per_minute: 100 }",
    )
    .start()
    .await;
    let zipped = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
    zipped
        .assert_status(200)
        .assert_header("content-encoding", "gzip");
    let answer: Value = serde_json::from_slice(&gunzipped(&zipped.body)).unwrap();
    assert_eq!(
        answer["usage"]["prompt_tokens"], 20,
        "the body passes intact"
    );
    assert_eq!(left(&zipped), 100);
    let streamed = ask(&tg, "acme", CHAT, &chat("gpt-4o", true)).await;
    streamed
        .assert_status(200)
        .assert_header("content-encoding", "gzip");
    assert!(String::from_utf8(gunzipped(&streamed.body))
        .unwrap()
        .ends_with("data: [DONE]\n\n"));

    // Neither was debited nor counted; a plain answer is.
    llm.set_gzip(false);
    let t0 = Instant::now();
    let plain = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
    plain
        .assert_status(200)
        .assert_no_header("content-encoding");
    assert_eq!(left(&plain), 100, "no debit for the compressed answers");
    expect_tokens(&tg, "acme", "gpt-4o", 20.0, 10.0).await;
    let after = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
    assert_left(&after, 70, 100, t0);
    assert_eq!(llm.count(), 4);
}

#[tokio::test]
async fn routes_without_tokens_neither_read_nor_debit() {
    let llm = LlmUpstream::start().await;
    llm.set_usage(20, 40);
    let tg = Config::new()
        .upstream(Group::new("openai", [llm.addr()]))
        .route(
            Route::prefix("/v1/chat/")
                .name("llm")
                .to("openai")
                .set("tokens", "{}"),
        )
        .route(Route::prefix("/v1/messages").name("plain").to("openai"))
        .identity("order", "[tenant_header]")
        .identity("trust_tenant_header", "true")
        .tier("llm", "{ rps: 100, burst: 100, tokens_per_minute: 100 }")
        .set("tenants", "acme", "{ tier: llm }")
        .observability("tenant_label_allowlist", "[acme]")
        .start()
        .await;
    for _ in 0..3 {
        let r = ask(
            &tg,
            "acme",
            MESSAGES,
            &message("claude-3-5-haiku-latest", false),
        )
        .await;
        r.assert_status(200)
            .assert_header("ratelimit-policy", "\"burst\";q=100;w=1");
        assert!(item(r.header("ratelimit"), "tokens").is_none(), "{r:?}");
    }
    // The tier's budget is whole on the route that counts tokens.
    let r = ask(&tg, "acme", CHAT, &chat("gpt-4o", false)).await;
    assert_eq!(left(&r), 100);
    expect_tokens(&tg, "acme", "gpt-4o", 20.0, 40.0).await;
    let text = tg.metrics().await;
    let counted: Vec<&str> = text.lines().filter(|l| l.starts_with(TOKENS)).collect();
    assert!(
        counted.iter().all(|l| l.contains("route=\"llm\"")),
        "{counted:#?}"
    );
}

#[test]
fn check_refuses_half_a_custom_usage_shape_naming_its_path() {
    let base = "upstreams: { llm: { endpoints: [127.0.0.1:3000] } }\n";
    let (code, out, err) = check_yaml(&format!(
        "{base}routes: [{{ match: {{ path_prefix: / }}, upstream: llm, tokens: {{ input: a }} }}]\n"
    ));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("routes[0].tokens.output"), "{err}");
    let (code, out, err) = check_yaml(&format!(
        "{base}routes: [{{ match: {{ path_prefix: / }}, upstream: llm, tokens: {{ input: a, output: b }} }}]\n"
    ));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = check_yaml(&format!(
        "{base}routes: [{{ match: {{ path_prefix: / }}, upstream: llm, tokens: {{}} }}]\n\
         tiers: {{ llm: {{ rps: 1, burst: 1, tokens_per_minute: 1000, tokens_per_day: 100000 }} }}\n"
    ));
    assert_eq!(code, 0, "{out}{err}");
}
