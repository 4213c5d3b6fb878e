//! Provider pools across groups (issue 18), end to end: the real tollgate binary in front of
//! two mock model APIs ([`LlmUpstream`]), one behind an OpenAI-style group (path
//! `/v1/chat/completions`, `Authorization: Bearer ...`) and one behind an Anthropic-style group
//! (`/v1/messages`, `x-api-key`), both reached by the client on one path. `group_balance:
//! round_robin` starts each request at the next group (smooth weighted order with
//! `group_weights`), each group applying its own adapter, and fails over to the other when a
//! group is down; without it the groups are a failover chain. The validation of
//! `group_balance` and `group_weights`. And the stream and provider metrics: SSE streams and
//! WebSockets open (`tollgate_streams_active`) and their durations, provider latency and time
//! to first token by group and model.

mod common;

use common::llm::{openai_stream, TEXT};
use common::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

/// The one path clients use; each group rewrites it to its provider's.
const PATH: &str = "/llm/chat";
const OPENAI_KEY: &str = "Bearer sk-openai-test";
const ANTHROPIC_KEY: &str = "sk-ant-test";

/// Group `openai` on `addr`: `Host: api.openai.com`, `/llm/chat` sent as
/// `/v1/chat/completions`, the key in `Authorization`.
fn openai(addr: SocketAddr) -> Group {
    Group::new("openai", [addr])
        .host("api.openai.com")
        .strip_prefix(PATH)
        .add_prefix("/v1/chat/completions")
        .header("authorization", OPENAI_KEY)
}

/// Group `anthropic` on `addr`: `Host: api.anthropic.com`, `/llm/chat` sent as
/// `/v1/messages`, the key in `x-api-key` with an `anthropic-version`.
fn anthropic(addr: SocketAddr) -> Group {
    Group::new("anthropic", [addr])
        .host("api.anthropic.com")
        .strip_prefix(PATH)
        .add_prefix("/v1/messages")
        .header("x-api-key", ANTHROPIC_KEY)
        .header("anthropic-version", "2023-06-01")
}

/// Route `chat` on `/llm/` over `[openai, anthropic]`, with the route keys in `extra` (YAML
/// text by key), counting tokens.
fn pool(openai_addr: SocketAddr, anthropic_addr: SocketAddr, extra: &[(&str, &str)]) -> Config {
    let route = extra.iter().fold(
        Route::prefix("/llm/")
            .name("chat")
            .failover(["openai", "anthropic"])
            .set("tokens", "{}"),
        |r, (k, v)| r.set(k, v),
    );
    Config::new()
        .upstream(openai(openai_addr))
        .upstream(anthropic(anthropic_addr))
        .route(route)
        // Failures print the proxy's log: keep it to tollgate's own lines.
        .observability("access_log", "{ enabled: false }")
}

/// A chat request for `model` (`stream`: an SSE answer).
fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": stream,
    })
}

/// POST `body` to the pool's path.
async fn ask(tg: &Tollgate, body: &Value) -> Got {
    tg.send(
        tg.req(Method::POST, PATH)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// Which provider's API answered: `"openai"` (a chat completion) or `"anthropic"` (a message).
#[track_caller]
fn provider(got: &Got) -> &'static str {
    got.assert_status(200);
    let j = got.json();
    match (j["object"].as_str(), j["type"].as_str()) {
        (Some("chat.completion"), _) => "openai",
        (_, Some("message")) => "anthropic",
        _ => panic!("neither provider's answer: {got:?}"),
    }
}

/// The providers that answered `n` requests of `body`, in order.
async fn providers(tg: &Tollgate, body: &Value, n: usize) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(provider(&ask(tg, body).await));
    }
    out
}

/// A header of a recorded request ("" when absent).
fn header<'a>(r: &'a LlmRequest, name: &str) -> &'a str {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn round_robin_alternates_providers_each_with_its_own_adapter() {
    let (oa, an) = (LlmUpstream::start().await, LlmUpstream::start().await);
    let tg = pool(oa.addr(), an.addr(), &[("group_balance", "round_robin")])
        .start()
        .await;
    let body = chat("gpt-4o", false);
    assert_eq!(
        providers(&tg, &body, 6).await,
        [
            "openai",
            "anthropic",
            "openai",
            "anthropic",
            "openai",
            "anthropic"
        ]
    );
    assert_eq!((oa.count(), an.count()), (3, 3));

    for r in oa.requests() {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(header(&r, "host"), "api.openai.com");
        assert_eq!(header(&r, "authorization"), OPENAI_KEY);
        assert!(!r.headers.contains_key("x-api-key"), "{r:?}");
        assert_eq!(r.body, body, "the body reaches the provider unchanged");
    }
    for r in an.requests() {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(header(&r, "host"), "api.anthropic.com");
        assert_eq!(header(&r, "x-api-key"), ANTHROPIC_KEY);
        assert_eq!(header(&r, "anthropic-version"), "2023-06-01");
        assert!(
            !r.headers.contains_key("authorization"),
            "no OpenAI key reaches Anthropic: {r:?}"
        );
        assert_eq!(r.body, body);
    }
    // Tokens are counted by the group that answered, in each provider's own usage shape.
    for group in ["openai", "anthropic"] {
        let labels = [("route", "chat"), ("group", group), ("type", "input")];
        tg.expect_metric("tollgate_llm_tokens_total", &labels, 30.0)
            .await;
    }
}

#[tokio::test]
async fn weights_three_to_one_give_a_a_b_a() {
    let (oa, an) = (LlmUpstream::start().await, LlmUpstream::start().await);
    let tg = pool(
        oa.addr(),
        an.addr(),
        &[
            ("group_balance", "round_robin"),
            ("group_weights", "{ openai: 3 }"),
        ],
    )
    .start()
    .await;
    let (a, b) = ("openai", "anthropic");
    assert_eq!(
        providers(&tg, &chat("gpt-4o", false), 8).await,
        [a, a, b, a, a, a, b, a],
        "smooth weighted order: the lighter group is not left to the end of each period"
    );
    assert_eq!((oa.count(), an.count()), (6, 2));
}

#[tokio::test]
async fn round_robin_fails_over_to_the_other_group_when_one_is_down() {
    for down in ["openai", "anthropic"] {
        let up = LlmUpstream::start().await;
        let closed = closed_addr();
        let (oa_addr, an_addr) = match down {
            "openai" => (closed, up.addr()),
            _ => (up.addr(), closed),
        };
        let tg = pool(oa_addr, an_addr, &[("group_balance", "round_robin")])
            .start()
            .await;
        let alive = if down == "openai" {
            "anthropic"
        } else {
            "openai"
        };
        let served = providers(&tg, &chat("gpt-4o", false), 8).await;
        assert_eq!(served, [alive; 8], "{down} down");
        assert_eq!(up.count(), 8, "{down} down");
        // The request sent to the closed group, retried on the live one, got the live group's
        // adapter.
        let path = if alive == "openai" {
            "/v1/chat/completions"
        } else {
            "/v1/messages"
        };
        assert!(up.requests().iter().all(|r| r.path == path), "{down} down");
        let retries = tg
            .metric("tollgate_upstream_retries_total", &[("upstream", alive)])
            .await
            .unwrap_or(0.0);
        assert!(
            retries >= 1.0,
            "{down} down: the requests started at {down} were retried on {alive}"
        );
    }
}

#[tokio::test]
async fn without_group_balance_the_first_group_serves_everything() {
    let (oa, an) = (LlmUpstream::start().await, LlmUpstream::start().await);
    let tg = pool(oa.addr(), an.addr(), &[]).start().await;
    assert_eq!(
        providers(&tg, &chat("gpt-4o", false), 6).await,
        ["openai"; 6]
    );
    assert_eq!((oa.count(), an.count()), (6, 0));
    // `failover` said out loud is the same.
    drop(tg);
    let tg = pool(oa.addr(), an.addr(), &[("group_balance", "failover")])
        .start()
        .await;
    assert_eq!(
        providers(&tg, &chat("gpt-4o", false), 4).await,
        ["openai"; 4]
    );
    assert_eq!(an.count(), 0);
}

#[test]
fn check_refuses_group_balance_and_weights_that_cannot_apply() {
    let groups = "upstreams:\n  openai: { endpoints: [127.0.0.1:3000] }\n  anthropic: { endpoints: [127.0.0.1:3001] }\n";
    let route =
        |keys: &str| format!("{groups}routes: [{{ match: {{ path_prefix: /llm/ }}, {keys} }}]\n");
    let refused = |keys: &str, path: &str| {
        let (code, out, err) = check_yaml(&route(keys));
        assert_eq!(code, 1, "{keys}: {out}{err}");
        assert!(err.contains(&format!(": {path}: ")), "{keys}: {err}");
        err
    };
    // One group has nobody to take turns with.
    refused(
        "upstreams: [openai], group_balance: round_robin",
        "routes[0].group_balance",
    );
    refused(
        "upstream: openai, group_balance: round_robin",
        "routes[0].group_balance",
    );
    // A weight for a group the route does not use.
    let err = refused(
        "upstreams: [openai, anthropic], group_balance: round_robin, group_weights: { mistral: 2 }",
        "routes[0].group_weights.mistral",
    );
    assert!(err.contains("openai, anthropic"), "{err}");
    // Weights are 1 to 100.
    for w in ["0", "101"] {
        refused(
            &format!(
                "upstreams: [openai, anthropic], group_balance: round_robin, group_weights: {{ openai: {w} }}"
            ),
            "routes[0].group_weights.openai",
        );
    }
    // Weights under failover would be ignored: refused rather than silently unused.
    refused(
        "upstreams: [openai, anthropic], group_weights: { openai: 3 }",
        "routes[0].group_weights",
    );
    for ok in [
        "upstreams: [openai, anthropic], group_balance: round_robin",
        "upstreams: [openai, anthropic], group_balance: round_robin, group_weights: { openai: 100, anthropic: 1 }",
        "upstreams: [openai, anthropic], group_balance: failover",
    ] {
        let (code, out, err) = check_yaml(&route(ok));
        assert_eq!(code, 0, "{ok}: {out}{err}");
    }
}

#[tokio::test]
async fn an_open_sse_stream_is_counted_until_it_ends_then_timed() {
    let llm = LlmUpstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("openai", [llm.addr()]))
        .route(Route::prefix("/").name("llm").to("openai"))
        .start()
        .await;
    let sse = [("kind", "sse")];
    let tx = llm.hold_next_stream();
    let frames = openai_stream("gpt-4o", "one two", Tokens::new(1, 2), true);
    tx.send(frames[0].clone()).unwrap();
    let resp = tg
        .req(Method::POST, "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(json!({"model": "gpt-4o", "stream": true}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the first event while the stream is open")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], frames[0].as_bytes());
    tg.expect_metric("tollgate_streams_active", &sse, 1.0).await;
    assert_eq!(
        tg.metric("tollgate_stream_duration_seconds_count", &sse)
            .await
            .unwrap_or(0.0),
        0.0,
        "an open stream has no duration yet"
    );

    for f in &frames[1..] {
        tx.send(f.clone()).unwrap();
    }
    drop(tx);
    let mut seen = first.to_vec();
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(seen, frames.concat().as_bytes());
    tg.expect_metric("tollgate_streams_active", &sse, 0.0).await;
    tg.expect_metric("tollgate_stream_duration_seconds_count", &sse, 1.0)
        .await;
    // A JSON answer is no stream.
    tg.send(
        tg.req(Method::POST, "/v1/chat/completions")
            .body(json!({"model": "gpt-4o"}).to_string()),
    )
    .await
    .assert_status(200);
    tg.expect_metric("tollgate_stream_duration_seconds_count", &sse, 1.0)
        .await;
    assert_eq!(
        tg.metric("tollgate_streams_active", &[("kind", "websocket")])
            .await
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn an_open_websocket_is_counted_until_it_closes_then_timed() {
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("app").to("app"))
        .start()
        .await;
    let ws_kind = [("kind", "websocket")];
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", tg.addr))
        .await
        .expect("ws handshake through tollgate");
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "hello".into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_text().unwrap(), "echo: hello");
    tg.expect_metric("tollgate_streams_active", &ws_kind, 1.0)
        .await;
    ws.close(None).await.unwrap();
    // Read to the end: the close handshake.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    tg.expect_metric("tollgate_streams_active", &ws_kind, 0.0)
        .await;
    tg.expect_metric("tollgate_stream_duration_seconds_count", &ws_kind, 1.0)
        .await;
    assert_eq!(
        tg.metric("tollgate_stream_duration_seconds_count", &[("kind", "sse")])
            .await
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn provider_latency_and_time_to_first_token_are_timed_by_group_and_model() {
    let (oa, an) = (LlmUpstream::start().await, LlmUpstream::start().await);
    let tg = pool(oa.addr(), an.addr(), &[("group_balance", "round_robin")])
        .start()
        .await;
    // openai, anthropic, openai, anthropic: one JSON and one streamed answer each.
    for (model, stream) in [
        ("gpt-4o", false),
        ("gpt-4o", false),
        ("gpt-4o-mini", true),
        ("gpt-4o-mini", true),
    ] {
        let got = ask(&tg, &chat(model, stream)).await;
        got.assert_status(200);
        if stream {
            assert!(got.text().contains(TEXT.split(' ').next().unwrap()));
        }
    }
    for group in ["openai", "anthropic"] {
        for model in ["gpt-4o", "gpt-4o-mini"] {
            let labels = [("group", group), ("model", model)];
            tg.expect_metric("tollgate_llm_request_duration_seconds_count", &labels, 1.0)
                .await;
            tg.expect_metric(
                "tollgate_llm_time_to_first_token_seconds_count",
                &labels,
                1.0,
            )
            .await;
        }
    }
    // Time to first token comes before the whole answer.
    let text = tg.metrics().await;
    let labels = [("group", "openai"), ("model", "gpt-4o-mini")];
    let first = metric_value(
        &text,
        "tollgate_llm_time_to_first_token_seconds_sum",
        &labels,
    )
    .unwrap();
    let whole = metric_value(&text, "tollgate_llm_request_duration_seconds_sum", &labels).unwrap();
    assert!(first <= whole, "first token {first} s, whole {whole} s");
}
