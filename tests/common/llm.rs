//! [`LlmUpstream`]: an in-process mock of an OpenAI-style and an Anthropic-style model API (an
//! axum server on `127.0.0.1:0`), for the tests of LLM token budgets and metrics.
//!
//! Every answer reports the usage the test set with [`LlmUpstream::set_usage`] (default 10
//! input, 20 output tokens), in the provider's own shape:
//!
//! | path | non-streamed (`application/json`) | `"stream": true` (`text/event-stream`) |
//! |---|---|---|
//! | `POST /v1/chat/completions` | `usage.prompt_tokens`, `completion_tokens`, `total_tokens` | chunks with `"usage": null`, then (only with `stream_options.include_usage`) a last chunk with `usage`, then `[DONE]` |
//! | `POST /v1/messages` | `usage.input_tokens`, `output_tokens` | `message_start` (`message.usage`: input, 1 output), ..., `message_delta` (`usage.output_tokens`: the total), `message_stop` |
//! | `POST /custom` | `{"meta": {"in": N, "out": M}, ...}` | one `data:` event of the same object |
//!
//! The model in an answer is the request's `"model"`. With [`LlmUpstream::set_gzip`] answers
//! come `Content-Encoding: gzip`. With [`LlmUpstream::hold_next_stream`] the next streamed
//! answer is written frame by frame as the test sends them (to prove a proxy passes each event
//! on at once); the frames the mock would send by itself come from [`openai_stream`],
//! [`anthropic_stream`] and [`custom_stream`]. Every request is recorded ([`LlmRequest`]).

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The usage an answer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt (input) tokens.
    pub input: u64,
    /// Completion (output) tokens.
    pub output: u64,
}

impl Tokens {
    /// `input` and `output` tokens.
    pub fn new(input: u64, output: u64) -> Tokens {
        Tokens { input, output }
    }
}

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    /// Path (`/v1/chat/completions`, `/v1/messages`, `/custom`).
    pub path: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The body, parsed (`Value::Null` when it was not JSON).
    pub body: Value,
}

impl LlmRequest {
    /// The body's `"model"` ("" when absent).
    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or("")
    }
}

struct Shared {
    usage: Mutex<Tokens>,
    gzip: Mutex<bool>,
    requests: Mutex<Vec<LlmRequest>>,
    /// The frames of the next streamed answer, when the test holds it.
    held: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

/// A running mock model API; stops when dropped.
pub struct LlmUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl LlmUpstream {
    /// Start on an ephemeral loopback port, answering with 10 input and 20 output tokens.
    pub async fn start() -> LlmUpstream {
        let shared = Arc::new(Shared {
            usage: Mutex::new(Tokens {
                input: 10,
                output: 20,
            }),
            gzip: Mutex::new(false),
            requests: Mutex::new(Vec::new()),
            held: Mutex::new(None),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/custom", post(custom))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        LlmUpstream { addr, shared, task }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Report `input` and `output` tokens in every answer from now on.
    pub fn set_usage(&self, input: u64, output: u64) {
        *self.shared.usage.lock().unwrap() = Tokens { input, output };
    }

    /// Compress every answer from now on (`Content-Encoding: gzip`), or stop.
    pub fn set_gzip(&self, on: bool) {
        *self.shared.gzip.lock().unwrap() = on;
    }

    /// The next streamed answer (`"stream": true`, any path) writes exactly the frames sent on
    /// the returned sender, each as one chunk when it is sent, and ends when the sender is
    /// dropped. Frames are raw SSE text (`"data: ...\n\n"`), as [`openai_stream`] gives them.
    pub fn hold_next_stream(&self) -> mpsc::UnboundedSender<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.shared.held.lock().unwrap() = Some(rx);
        tx
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<LlmRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Number of requests seen so far.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
}

impl Drop for LlmUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The frames of an OpenAI Chat Completions stream: one chunk per word of `text` (each with
/// `"usage": null` when `include_usage`), the usage chunk (only when `include_usage`), `[DONE]`.
pub fn openai_stream(model: &str, text: &str, usage: Tokens, include_usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        data(&c)
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for word in text.split_inclusive(' ') {
        frames.push(chunk(json!({"content": word}), Value::Null));
    }
    frames.push(chunk(json!({}), json!("stop")));
    if include_usage {
        frames.push(data(&json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [],
            "usage": openai_usage(usage),
        })));
    }
    frames.push("data: [DONE]\n\n".to_string());
    frames
}

/// The frames of an Anthropic Messages stream: `message_start` (the input tokens and 1 output
/// token, as Anthropic reports them), a text block of `text` one word per delta, a `ping`,
/// `message_delta` (the cumulative output tokens), `message_stop`.
pub fn anthropic_stream(model: &str, text: &str, usage: Tokens) -> Vec<String> {
    let mut frames = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "content": [],
                "model": model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": usage.input, "output_tokens": 1},
            }}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    for word in text.split_inclusive(' ') {
        frames.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": word}}),
        ));
    }
    frames.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": usage.output}}),
    ));
    frames.push(event("message_stop", &json!({"type": "message_stop"})));
    frames
}

/// The frames of a `/custom` stream: a text event, then one event with `meta.in`/`meta.out`.
pub fn custom_stream(text: &str, usage: Tokens) -> Vec<String> {
    vec![
        data(&json!({"text": text})),
        data(&json!({"meta": {"in": usage.input, "out": usage.output}})),
    ]
}

/// An OpenAI `usage` object.
fn openai_usage(u: Tokens) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
    })
}

/// `data: <json>\n\n`.
fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// `event: <name>\ndata: <json>\n\n`.
fn event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

/// The text of every answer the mock writes by itself.
pub const TEXT: &str = "Hello from the mock model, one word at a time.";

/// Read and record the request; its body and the usage to report.
async fn record(shared: &Shared, req: Request) -> (Value, Tokens) {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    shared.requests.lock().unwrap().push(LlmRequest {
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body: body.clone(),
    });
    (body, *shared.usage.lock().unwrap())
}

async fn openai(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (body, usage) = record(&shared, req).await;
    let model = body["model"].as_str().unwrap_or("gpt-mock").to_string();
    if body["stream"] == json!(true) {
        let include = body["stream_options"]["include_usage"] == json!(true);
        return stream(&shared, openai_stream(&model, TEXT, usage, include));
    }
    whole(
        &shared,
        &json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": TEXT},
                "finish_reason": "stop",
            }],
            "usage": openai_usage(usage),
            "system_fingerprint": "fp_mock",
        }),
    )
}

async fn anthropic(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (body, usage) = record(&shared, req).await;
    let model = body["model"].as_str().unwrap_or("claude-mock").to_string();
    if body["stream"] == json!(true) {
        return stream(&shared, anthropic_stream(&model, TEXT, usage));
    }
    whole(
        &shared,
        &json!({
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": usage.input, "output_tokens": usage.output},
        }),
    )
}

async fn custom(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (body, usage) = record(&shared, req).await;
    if body["stream"] == json!(true) {
        return stream(&shared, custom_stream(TEXT, usage));
    }
    whole(
        &shared,
        &json!({
            "result": TEXT,
            "meta": {"in": usage.input, "out": usage.output},
        }),
    )
}

/// A JSON answer (gzipped when asked).
fn whole(shared: &Shared, v: &Value) -> Response {
    let mut bytes = serde_json::to_vec(v).unwrap();
    let gzip = *shared.gzip.lock().unwrap();
    if gzip {
        bytes = gzipped(&bytes);
    }
    let mut resp = Response::new(Body::from(bytes));
    headers(&mut resp, "application/json", gzip);
    resp
}

/// An SSE answer of `frames`, or of the frames the test sends when it holds the stream; each
/// frame one chunk (gzipped whole when asked: a test of compression needs no event timing).
fn stream(shared: &Shared, frames: Vec<String>) -> Response {
    let gzip = *shared.gzip.lock().unwrap();
    let held = shared.held.lock().unwrap().take();
    let body = match (held, gzip) {
        (Some(mut rx), _) => Body::from_stream(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|f| f.map(|f| Ok::<_, Infallible>(Bytes::from(f))))
        })),
        (None, true) => Body::from(gzipped(frames.concat().as_bytes())),
        (None, false) => Body::from_stream(futures_util::stream::iter(
            frames
                .into_iter()
                .map(|f| Ok::<_, Infallible>(Bytes::from(f))),
        )),
    };
    let mut resp = Response::new(body);
    headers(&mut resp, "text/event-stream", gzip);
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

fn headers(resp: &mut Response, content_type: &'static str, gzip: bool) {
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("x-upstream", HeaderValue::from_static("llm"));
    if gzip {
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
    }
}

/// `bytes`, gzip-compressed.
pub fn gzipped(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// `bytes`, gzip-decompressed.
pub fn gunzipped(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}
