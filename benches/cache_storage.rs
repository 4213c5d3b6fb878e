//! The response cache's memory storage: criterion benches of a lookup hit, a lookup miss and a
//! miss that stores (with eviction at a full budget), preceded by a report of what one million
//! distinct small responses cost in memory against the byte budget.
//!
//! Run: `cargo bench --bench cache_storage`. Set `TOLLGATE_BENCH_NO_REPORT=1` to skip the report.
//! Under `cargo test --all-targets` (no `--bench` argument) the report is skipped, since its
//! floods take half a minute and a gigabyte, and criterion runs each bench once as a test.
//!
//! Each memory scenario runs in a child process (this binary, re-run with
//! `TOLLGATE_CACHE_MEMORY` set) so its RSS figures are not blurred by another scenario's freed
//! pages. The allocator is mimalloc, as in the `tollgate` binary. The "unbounded" scenario keeps
//! every entry and is how `ENTRY_OVERHEAD` was measured: RSS growth per entry minus the payload
//! bytes charged for it.

use criterion::{black_box, criterion_group, BatchSize, Criterion};
use futures_util::FutureExt;
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};
use pingora_http::ResponseHeader;
use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tollgate::cache::storage::{EntryTag, MemoryStorage, ENTRY_OVERHEAD};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's "return what you can to the OS now" (linked in through the `mimalloc` crate).
    fn mi_collect(force: bool);
}

const MEMORY_ENV: &str = "TOLLGATE_CACHE_MEMORY";
const FLOOD: usize = 1_000_000;
const MIB: usize = 1 << 20;

/// The storage's futures never wait (no I/O, no lock held across an await): poll them once.
fn now<F: Future>(f: F) -> F::Output {
    f.now_or_never().expect("storage futures complete at once")
}

/// A tagged key for the i-th distinct URL, as the proxy would build it: every tag string is
/// its own allocation (the conservative case for memory).
fn key(i: usize) -> CacheKey {
    let host = [
        "api.example.com",
        "shop.example.com",
        "example.org",
        "cdn.example.net",
    ][i % 4];
    let path = format!("/v1/items/{i}");
    let query = if i % 2 == 0 { "" } else { "page=2&sort=asc" };
    let mut key = CacheKey::new(format!("{host}{path}?{query}"), "");
    key.extensions.insert(EntryTag {
        scope: Arc::from("shared"),
        host: Arc::from(host),
        path: Arc::from(path),
        query: Arc::from(query),
    });
    key
}

/// What the stored responses look like.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// ~200-byte JSON bodies with typical API response headers.
    Json,
    /// A few bytes of body and two headers: the per-entry overhead dominates.
    Tiny,
}

/// The i-th response: meta and body.
fn response(i: usize, shape: Shape) -> (CacheMeta, Vec<u8>) {
    match shape {
        Shape::Json => {
            let body = body(i);
            (meta(i, body.len()), body)
        }
        Shape::Tiny => {
            let body = format!("{{\"id\":{i}}}").into_bytes();
            let mut h = ResponseHeader::build(200, Some(2)).unwrap();
            h.append_header("content-type", "application/json").unwrap();
            h.append_header("content-length", body.len()).unwrap();
            let now = SystemTime::now();
            let meta = CacheMeta::new(now + Duration::from_secs(300), now, 0, 0, h);
            (meta, body)
        }
    }
}

/// Typical JSON API response headers; `etag` and `x-request-id` differ per response.
fn meta(i: usize, body_len: usize) -> CacheMeta {
    let mut h = ResponseHeader::build(200, Some(10)).unwrap();
    let headers: [(&str, String); 9] = [
        ("content-type", "application/json; charset=utf-8".into()),
        ("content-length", body_len.to_string()),
        ("cache-control", "public, max-age=300".into()),
        ("date", "Sat, 22 Nov 2025 23:33:10 GMT".into()),
        (
            "etag",
            format!(
                "W/\"{:016x}\"",
                (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ),
        ),
        ("vary", "Accept-Encoding".into()),
        ("server", "upstream/1.4".into()),
        ("x-request-id", format!("01JDA{:021}", i)),
        ("strict-transport-security", "max-age=31536000".into()),
    ];
    for (name, value) in headers {
        h.append_header(name, value).unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(300), now, 30, 60, h)
}

/// A ~200-byte JSON body for the i-th item.
fn body(i: usize) -> Vec<u8> {
    format!(
        r#"{{"id":{i},"sku":"SKU-{:08}","name":"Item number {i}","price":{}.{:02},"currency":"EUR","stock":{},"tags":["catalog","v1","item"],"updated":"2025-11-22T23:33:10Z","url":"/v1/items/{i}"}}"#,
        i * 7,
        i % 1000,
        i % 100,
        i % 57,
    )
    .into_bytes()
}

fn store(s: &'static MemoryStorage, i: usize, shape: Shape) {
    let (meta, body) = response(i, shape);
    let key = key(i);
    let span = Span::inactive().handle();
    let mut miss = now(s.get_miss_handler(&key, &meta, &span)).unwrap();
    now(miss.write_body(body.into(), true)).unwrap();
    now(miss.finish()).unwrap();
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One flood: a million distinct responses into one storage.
fn memory_scenario(name: &str) {
    let (budget, shape) = match name {
        "unbounded" => (64 << 30, Shape::Json),
        "64MiB" => (64 * MIB, Shape::Json),
        "256MiB" => (256 * MIB, Shape::Json),
        "tiny-unbounded" => (64 << 30, Shape::Tiny),
        "tiny-64MiB" => (64 * MIB, Shape::Tiny),
        other => panic!("unknown scenario {other}"),
    };
    let unbounded = name.ends_with("unbounded");
    // Warm what is allocated once (zstd contexts of the header serializer, the runtime-free
    // future machinery) before the baseline.
    let _ = response(0, shape).0.serialize().unwrap();
    let s: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(budget)));
    let base = status_kib("VmRSS:");
    let started = Instant::now();
    for i in 0..FLOOD {
        store(s, i, shape);
    }
    let insert_ns = started.elapsed().as_nanos() as f64 / FLOOD as f64;
    let (rss, hwm) = (status_kib("VmRSS:"), status_kib("VmHWM:"));
    let st = s.stats();
    let grown = rss.saturating_sub(base);
    let hwm_grown = hwm.saturating_sub(base);
    println!(
        "  {name:<14} {FLOOD} inserts ({insert_ns:.0} ns each, building key, meta and body \
         included): {} entries, used {:.1} MiB of {}, evicted {} ({:.1} MiB)",
        st.entries,
        st.used_bytes as f64 / MIB as f64,
        if unbounded {
            "no limit".to_string()
        } else {
            format!("{} MiB", budget / MIB)
        },
        st.evicted_entries,
        st.evicted_bytes as f64 / MIB as f64,
    );
    println!(
        "  {:<14} RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB), peak +{:.1} MiB",
        "",
        mib(base),
        mib(rss),
        mib(grown),
        mib(hwm_grown),
    );
    let per_entry_payload =
        (st.used_bytes as f64 / st.entries.max(1) as f64) - ENTRY_OVERHEAD as f64;
    let per_entry_rss = grown as f64 * 1024.0 / st.entries.max(1) as f64;
    if unbounded {
        println!(
            "  {:<14} per entry: RSS {per_entry_rss:.0} B, charged for body, meta and tag \
             allocations {per_entry_payload:.0} B -> fixed overhead {:.0} B \
             (ENTRY_OVERHEAD = {ENTRY_OVERHEAD}); weight {:.0} B",
            "",
            per_entry_rss - per_entry_payload,
            st.used_bytes as f64 / st.entries.max(1) as f64,
        );
    } else {
        let over = |kib: u64| mib(kib) - (budget / MIB) as f64;
        println!(
            "  {:<14} RSS growth minus budget: {:+.1} MiB now, {:+.1} MiB at peak",
            "",
            over(grown),
            over(hwm_grown),
        );
    }
    unsafe { mi_collect(true) };
    let collected = status_kib("VmRSS:");
    println!(
        "  {:<14} after mi_collect: RSS {:.1} MiB (+{:.1} MiB)",
        "",
        mib(collected),
        mib(collected.saturating_sub(base)),
    );
    if name == "256MiB" {
        // The invalidation calls at this size: one path, a host's subtree, a full scan.
        let last = FLOOD - 1;
        let tag = key(last).extensions.get::<EntryTag>().cloned().unwrap();
        let t = Instant::now();
        let n = s.purge_path(&tag.scope, &tag.host, &tag.path);
        let path_took = t.elapsed();
        let t = Instant::now();
        let m = s.purge_prefix("shared", &tag.host, "/v1/items/99");
        let prefix_took = t.elapsed();
        let t = Instant::now();
        let w = s.purge_where(|t| t.path.ends_with('7'));
        let where_took = t.elapsed();
        println!(
            "  {:<14} purge_path {n} in {path_took:.1?}, purge_prefix {m} in {prefix_took:.1?}, \
             purge_where (full scan of {}) {w} in {where_took:.1?}",
            "", st.entries,
        );
    }
}

fn report() {
    println!("cache storage report");
    println!(
        "  memory, {FLOOD} distinct ~200-byte JSON responses with typical headers \
         (tiny-: ~12-byte bodies, two headers; ENTRY_OVERHEAD = {ENTRY_OVERHEAD} B):"
    );
    let exe = std::env::current_exe().expect("current exe");
    for scenario in [
        "unbounded",
        "64MiB",
        "256MiB",
        "tiny-unbounded",
        "tiny-64MiB",
    ] {
        let status = std::process::Command::new(&exe)
            .env(MEMORY_ENV, scenario)
            .status()
            .expect("run memory scenario");
        assert!(status.success(), "scenario {scenario} failed");
    }
}

fn bench_storage(c: &mut Criterion) {
    let span = Span::inactive().handle();

    // Hits over 10k stored entries, whole body read.
    let s: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(256 * MIB)));
    let keys: Vec<CacheKey> = (0..10_000).map(key).collect();
    for i in 0..keys.len() {
        store(s, i, Shape::Json);
    }
    let next = Cell::new(0usize);
    c.bench_function("cache_storage/lookup_hit", |b| {
        b.iter(|| {
            let i = next.get();
            next.set((i + 1) % keys.len());
            let (meta, mut hit) = now(s.lookup(black_box(&keys[i]), &span)).unwrap().unwrap();
            let body = now(hit.read_body()).unwrap();
            (meta, body)
        })
    });

    let absent = key(FLOOD + 1);
    c.bench_function("cache_storage/lookup_miss", |b| {
        b.iter(|| now(s.lookup(black_box(&absent), &span)).unwrap())
    });

    // A miss that stores into a full 64 MiB budget: each insert evicts. Key, meta and body are
    // built outside the timing; serializing the meta (zstd) is inside, as in the proxy.
    let full: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(64 * MIB)));
    let mut i = 0;
    while full.stats().evicted_entries == 0 {
        store(full, i, Shape::Json);
        i += 1;
    }
    let i = Cell::new(i);
    c.bench_function("cache_storage/miss_store_evicting", |b| {
        b.iter_batched(
            || {
                i.set(i.get() + 1);
                let (meta, body) = response(i.get(), Shape::Json);
                (key(i.get()), meta, body)
            },
            |(key, meta, body)| {
                let mut miss = now(full.get_miss_handler(&key, &meta, &span)).unwrap();
                now(miss.write_body(body.into(), true)).unwrap();
                now(miss.finish()).unwrap();
                key
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_storage);

fn main() {
    if let Ok(scenario) = std::env::var(MEMORY_ENV) {
        memory_scenario(&scenario);
        return;
    }
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if benchmarking && std::env::var_os("TOLLGATE_BENCH_NO_REPORT").is_none() {
        report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
