//! What reading token usage costs per answer (issue 18): a [`UsageReader`] fed a realistic 2 KB
//! OpenAI JSON answer in two chunks, and 200-event OpenAI- and Anthropic-style SSE streams fed
//! one event per chunk (as a network delivers them), each from `new` to `finish`; next to the
//! same chunks passed through a no-op, the floor of any body filter.
//!
//! Run: `cargo bench --bench usage` (quick: `-- --warm-up-time 1 --measurement-time 3`). A
//! summary in ns per body follows criterion's own lines.

use bytes::Bytes;
use criterion::{black_box, criterion_group, Criterion};
use tollgate::llm::usage::{BodyKind, Usage, UsageReader, UsageShape};

/// The window the proxy passes.
const WINDOW: usize = 16 * 1024;

/// A non-streamed OpenAI chat completion of about 2 KB, usage near the end, in two chunks.
fn openai_json() -> Vec<Vec<u8>> {
    let text = "Token budgets count what a request costs, not how many requests there were: \
                one answer can use fifty tokens and the next fifty thousand. \\\"Quoted\\\" \
                words, a newline\\n and unicode \\u00e9 keep the string scanner honest. "
        .repeat(8);
    let body = format!(
        r#"{{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1117,"completion_tokens":346,"total_tokens":1463,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_ee1d74bde0"}}"#
    );
    let half = body.len() / 2;
    vec![body[..half].into(), body[half..].into()]
}

/// An OpenAI chat completion stream with `include_usage`: 198 content chunks (`"usage":null` in
/// each), the usage chunk and `[DONE]`, one event per chunk.
fn openai_sse() -> Vec<Vec<u8>> {
    let mut events: Vec<Vec<u8>> = (0..198)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    events.push(
        b"data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":1117,\"completion_tokens\":198,\"total_tokens\":1315}}\n\n"
            .to_vec(),
    );
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

/// An Anthropic Messages stream: `message_start`, a content block of 196 deltas,
/// `message_delta` with the output count, `message_stop`; one event per chunk.
fn anthropic_sse() -> Vec<Vec<u8>> {
    let mut events = vec![
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_013Zva2CMHLNnXjNJJKqJ2EF\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1117,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n".to_vec(),
        b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_vec(),
    ];
    for i in 0..195 {
        events.push(
            format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" word{i}\"}}}}\n\n"
            )
            .into_bytes(),
        );
    }
    events.push(
        b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_vec(),
    );
    events.push(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":198}}\n\n".to_vec());
    events.push(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_vec());
    events
}

fn read(kind: BodyKind, chunks: &[Bytes]) -> Option<Usage> {
    let mut r = UsageReader::new(kind, UsageShape::Auto, WINDOW);
    for c in chunks {
        r.feed(black_box(c));
    }
    r.finish()
}

fn no_op(chunks: &[Bytes]) -> usize {
    let mut n = 0;
    for c in chunks {
        n += black_box(c).len();
    }
    n
}

/// The chunks as the proxy hands them over: each its own [`Bytes`].
fn shared(chunks: Vec<Vec<u8>>) -> Vec<Bytes> {
    chunks.into_iter().map(Bytes::from).collect()
}

struct Body {
    name: &'static str,
    kind: BodyKind,
    chunks: Vec<Bytes>,
    want: Usage,
}

fn bodies() -> Vec<Body> {
    vec![
        Body {
            name: "openai_json_2kb",
            kind: BodyKind::Json,
            chunks: shared(openai_json()),
            want: Usage {
                input: 1117,
                output: 346,
            },
        },
        Body {
            name: "openai_sse_200_events",
            kind: BodyKind::Sse,
            chunks: shared(openai_sse()),
            want: Usage {
                input: 1117,
                output: 198,
            },
        },
        Body {
            // As a proxy reads a 40 KB stream that arrived at once: what fits its first 4 KiB
            // read after the response header, then the rest in one read.
            name: "openai_sse_200_events_2_reads",
            kind: BodyKind::Sse,
            chunks: {
                let all = openai_sse().concat();
                vec![
                    Bytes::copy_from_slice(&all[..3700]),
                    Bytes::copy_from_slice(&all[3700..]),
                ]
            },
            want: Usage {
                input: 1117,
                output: 198,
            },
        },
        Body {
            name: "anthropic_sse_200_events",
            kind: BodyKind::Sse,
            chunks: shared(anthropic_sse()),
            want: Usage {
                input: 1117,
                output: 198,
            },
        },
    ]
}

fn bench_usage(c: &mut Criterion) {
    for b in bodies() {
        assert_eq!(read(b.kind, &b.chunks), Some(b.want), "{}", b.name);
        c.bench_function(&format!("usage/{}", b.name), |bench| {
            bench.iter(|| read(b.kind, &b.chunks))
        });
        c.bench_function(&format!("usage/{}/no_op", b.name), |bench| {
            bench.iter(|| no_op(&b.chunks))
        });
    }
}

/// This thread's CPU time, in ns: unlike wall time, it does not count the time the thread waits
/// while other processes (a parallel build) use the core.
fn cpu_ns() -> u128 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// The CPU time of one run of `f`, in ns: the best mean of 5 rounds, each long enough to last
/// about 200 ms.
fn mean_ns<T>(mut f: impl FnMut() -> T) -> f64 {
    let mut runs = 1000u64;
    loop {
        let started = cpu_ns();
        for _ in 0..runs {
            black_box(f());
        }
        if cpu_ns() - started >= 200_000_000 {
            break;
        }
        runs *= 2;
    }
    (0..5)
        .map(|_| {
            let started = cpu_ns();
            for _ in 0..runs {
                black_box(f());
            }
            (cpu_ns() - started) as f64 / runs as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn summary() {
    println!(
        "\nusage extraction, CPU ns per body (new + feed every chunk + finish; best of 5 means):"
    );
    println!(
        "  {:<26} {:>6} {:>7} {:>12} {:>10} {:>12}",
        "body", "bytes", "chunks", "UsageReader", "no-op", "per chunk"
    );
    for b in bodies() {
        let bytes: usize = b.chunks.iter().map(Bytes::len).sum();
        let reader = mean_ns(|| read(b.kind, &b.chunks));
        let floor = mean_ns(|| no_op(&b.chunks));
        println!(
            "  {:<26} {:>6} {:>7} {:>12.0} {:>10.0} {:>12.1}",
            b.name,
            bytes,
            b.chunks.len(),
            reader,
            floor,
            (reader - floor) / b.chunks.len() as f64,
        );
    }
}

criterion_group!(benches, bench_usage);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
