//! The rate-limit decision: criterion benches of `LocalLimiter::check` (hot key, new keys, keys
//! spread over shards) and the header builders, preceded by a report of what the limiter costs
//! in memory under a flood of one million distinct anonymous client IPs.
//!
//! Run: `cargo bench --bench ratelimit`. Set `TOLLGATE_BENCH_NO_REPORT=1` to skip the report.
//!
//! Each memory scenario runs in a child process (this binary, re-run with `TOLLGATE_RL_MEMORY`
//! set) so its RSS figures are not blurred by the previous scenario's freed pages. The allocator
//! is mimalloc, as in the `tollgate` binary, wrapped to count allocations: that count proves
//! `check` on a known key allocates nothing.

use criterion::{black_box, criterion_group, BatchSize, Criterion};
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tollgate::ratelimit::{headers, LimitKey, Limits, LocalLimiter, RateLimiter};

struct Counting(mimalloc::MiMalloc);

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        self.0.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        self.0.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        self.0.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting(mimalloc::MiMalloc);

extern "C" {
    /// mimalloc's "return what you can to the OS now" (linked in through the `mimalloc` crate).
    fn mi_collect(force: bool);
}

const SEC: u64 = 1_000_000_000;
/// 2025-01-01T12:00:00Z.
const NOON: u64 = 1_735_732_800 * SEC;
const NEXT_MIDNIGHT: u64 = NOON + 12 * 3600 * SEC;
const MEMORY_ENV: &str = "TOLLGATE_RL_MEMORY";
const FLOOD: u32 = 1_000_000;

/// The anonymous tier of an illustrative config.
const ANON: Limits = Limits {
    rps: 10.0,
    burst: 20,
    daily: Some(1000),
};
const ANON_UNLIMITED_DAILY: Limits = Limits {
    rps: 10.0,
    burst: 20,
    daily: None,
};
const ENTERPRISE: Limits = Limits {
    rps: 2000.0,
    burst: 5000,
    daily: None,
};

/// `ip:10.x.y.z` for the i-th client of a flood.
fn ip_key(i: u32, scope: &Arc<str>) -> LimitKey {
    LimitKey {
        subject: Arc::from(format!(
            "ip:10.{}.{}.{}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        )),
        scope: scope.clone(),
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One flood: one request from each of a million new client IPs, then sweeps.
fn memory_scenario(name: &str) {
    let scope: Arc<str> = Arc::from("tier");
    let base = rss_kib();
    let (limiter, limits, spacing_ns) = match name {
        "no-cap" => (LocalLimiter::new(0), ANON, 0),
        "no-cap-unlimited-daily" => (LocalLimiter::new(0), ANON_UNLIMITED_DAILY, 0),
        "cap-100k" => (LocalLimiter::new(100_000), ANON, 0),
        // 10k new IPs per second for 100 s, each idle 0.1 s after its request, no background
        // sweep: what the shards' own amortised sweeping keeps.
        "spread-over-100s" => (LocalLimiter::new(0), ANON_UNLIMITED_DAILY, 100_000),
        other => panic!("unknown scenario {other}"),
    };
    let started = Instant::now();
    let mut now = NOON;
    for i in 0..FLOOD {
        assert!(limiter.check(&ip_key(i, &scope), &limits, 1, now).allowed);
        now += spacing_ns;
    }
    let insert_ns = started.elapsed().as_nanos() as f64 / f64::from(FLOOD);
    let filled = rss_kib();
    let entries = limiter.len();
    println!(
        "  {name:<24} {FLOOD} inserts ({insert_ns:.0} ns each, building the key included): {entries:>7} entries, \
         RSS {:.1} MiB (+{:.1} MiB, {:.0} B/entry)",
        mib(filled),
        mib(filled - base),
        (filled - base) as f64 * 1024.0 / entries.max(1) as f64,
    );
    let sweep = |label: &str, at: u64| {
        let started = Instant::now();
        let removed = limiter.sweep(at);
        let took = started.elapsed();
        let rss = rss_kib();
        // mimalloc hands freed pages back to the OS lazily, on later allocator calls; force it
        // to see what the sweep made reclaimable.
        unsafe { mi_collect(true) };
        let collected = rss_kib();
        println!(
            "  {:<24} sweep {label}: removed {removed} in {took:.1?}, {} entries, RSS {:.1} MiB \
             (+{:.1} MiB), after mi_collect {:.1} MiB (+{:.1} MiB)",
            "",
            limiter.len(),
            mib(rss),
            mib(rss.saturating_sub(base)),
            mib(collected),
            mib(collected.saturating_sub(base)),
        );
    };
    sweep("after refill (now + 10 s)", now + 10 * SEC);
    if limits.daily.is_some() {
        sweep("after next UTC midnight", NEXT_MIDNIGHT);
    }
}

fn allocations_per_hot_check() -> f64 {
    let limiter = LocalLimiter::new(0);
    let key = LimitKey::new("acme", "tier");
    let mut now = NOON;
    limiter.check(&key, &ENTERPRISE, 1, now);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        now += SEC / 1000;
        black_box(limiter.check(&key, &ENTERPRISE, 1, now));
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0
}

/// Checks per second from `threads` threads sharing one limiter, over `keys` keys.
fn threaded_throughput(threads: usize, keys: usize) -> f64 {
    const PER_THREAD: u64 = 2_000_000;
    let limiter = Arc::new(LocalLimiter::new(0));
    let keys: Arc<Vec<LimitKey>> = Arc::new(
        (0..keys)
            .map(|i| LimitKey::new(format!("tenant-{i}"), "tier"))
            .collect(),
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (limiter, keys) = (limiter.clone(), keys.clone());
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let key = &keys[(i as usize + t) % keys.len()];
                    black_box(limiter.check(key, &ENTERPRISE, 1, NOON + i * 1000));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (threads as u64 * PER_THREAD) as f64 / started.elapsed().as_secs_f64()
}

fn report() {
    println!("rate limiter report");
    let allocs = allocations_per_hot_check();
    println!("  allocations per check on a known key: {allocs}");
    assert_eq!(allocs, 0.0, "check on a known key must not allocate");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for keys in [1, 64] {
        println!(
            "  {cores} threads, {keys:>2} key(s): {:.1} M checks/s",
            threaded_throughput(cores, keys) / 1e6
        );
    }
    println!("  memory, one request from each of {FLOOD} distinct client IPs (ANON tier):");
    let exe = std::env::current_exe().expect("current exe");
    for scenario in [
        "no-cap",
        "no-cap-unlimited-daily",
        "cap-100k",
        "spread-over-100s",
    ] {
        let status = std::process::Command::new(&exe)
            .env(MEMORY_ENV, scenario)
            .status()
            .expect("run memory scenario");
        assert!(status.success(), "scenario {scenario} failed");
    }
}

fn bench_check(c: &mut Criterion) {
    let scope: Arc<str> = Arc::from("tier");

    let limiter = LocalLimiter::new(0);
    let key = LimitKey::new("acme", scope.clone());
    let now = Cell::new(NOON);
    c.bench_function("ratelimit/check/hot_key", |b| {
        b.iter(|| {
            // 1 ms apart at 2000 rps: every request allowed, the common case.
            now.set(now.get() + SEC / 1000);
            limiter.check(black_box(&key), &ENTERPRISE, 1, now.get())
        })
    });

    let limiter = LocalLimiter::new(0);
    let keys: Vec<LimitKey> = (0..64)
        .map(|i| LimitKey::new(format!("tenant-{i}"), scope.clone()))
        .collect();
    let next = Cell::new(0usize);
    c.bench_function("ratelimit/check/64_keys_across_shards", |b| {
        b.iter(|| {
            let i = next.get();
            next.set((i + 1) % keys.len());
            now.set(now.get() + SEC / 1000);
            limiter.check(black_box(&keys[i]), &ENTERPRISE, 1, now.get())
        })
    });

    // New keys whose entries expire (10 µs apart, idle 0.1 s later): the flood steady state
    // with amortised self-sweeping and no cap. Building the key is excluded from the timing.
    let limiter = LocalLimiter::new(0);
    let i = Cell::new(0u32);
    c.bench_function("ratelimit/check/new_key_expiring", |b| {
        b.iter_batched(
            || {
                i.set(i.get().wrapping_add(1));
                ip_key(i.get(), &scope)
            },
            |key| {
                now.set(now.get() + 10_000);
                limiter.check(&key, &ANON_UNLIMITED_DAILY, 1, now.get());
                key
            },
            BatchSize::SmallInput,
        )
    });

    // New keys that all stay active (same instant, daily counted): the 100k cap evicts.
    let limiter = LocalLimiter::new(100_000);
    let i = Cell::new(0u32);
    c.bench_function("ratelimit/check/new_key_at_cap_100k", |b| {
        b.iter_batched(
            || {
                i.set(i.get().wrapping_add(1));
                ip_key(i.get(), &scope)
            },
            |key| {
                limiter.check(&key, &ANON, 1, NOON);
                key
            },
            BatchSize::SmallInput,
        )
    });
}

/// The async seam (`Limiter::check`, store: local) against the direct call it wraps, both on
/// the real clock: what making the seam async costs the local path.
fn bench_seam(c: &mut Criterion) {
    use futures_util::FutureExt;
    use tollgate::ratelimit::store::{Fallback, StorePolicy};
    // Never refuses on the real clock, so both measure the common (allowed) path.
    const UNLIMITED: Limits = Limits {
        rps: 1e9,
        burst: 1_000_000_000,
        daily: None,
    };
    let key = LimitKey::new("acme", "tier");
    let local = Arc::new(LocalLimiter::new(0));
    c.bench_function("ratelimit/seam/direct_local_check", |b| {
        b.iter(|| {
            let now = tollgate::ratelimit::unix_nanos_now();
            local.check(black_box(&key), &UNLIMITED, 1, now)
        })
    });
    let limiter = tollgate::ratelimit::Limiter::new(Arc::new(LocalLimiter::new(0)), None);
    let policy = StorePolicy {
        shared: false,
        on_error: Fallback::Local,
        lease: None,
    };
    c.bench_function("ratelimit/seam/async_limiter_local_store", |b| {
        b.iter(|| {
            limiter
                .check(black_box(&key), &UNLIMITED, 1, policy)
                .now_or_never()
                .expect("the local path never waits")
        })
    });
}

fn bench_headers(c: &mut Criterion) {
    let limiter = LocalLimiter::new(0);
    let d = limiter.check(&LimitKey::new("acme", "tier"), &ANON, 1, NOON);
    c.bench_function("ratelimit/headers/policy_and_ratelimit", |b| {
        b.iter(|| {
            (
                headers::policy_header(black_box(&ANON)),
                headers::ratelimit_header(black_box(&d)),
            )
        })
    });
}

criterion_group!(benches, bench_check, bench_seam, bench_headers);

fn main() {
    if let Ok(scenario) = std::env::var(MEMORY_ENV) {
        memory_scenario(&scenario);
        return;
    }
    if std::env::var_os("TOLLGATE_BENCH_NO_REPORT").is_none() {
        report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
