//! Criterion micro-benchmarks of the per-request functions tollgate adds to Pingora's own work:
//! route matching, request ids, forwarding-header rewriting, endpoint selection. Run:
//! `cargo bench --bench hot_path`.
//! The end-to-end figure (rps against nginx) comes from `benches/load.sh`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_http::RequestHeader;
use tollgate::observe::request_id;
use tollgate::proxy::headers;
use tollgate::route::{HostMatch, RouteTable};

fn route_table(n: usize) -> RouteTable<usize> {
    let mut routes: Vec<(HostMatch, String, usize)> = (0..n)
        .map(|i| (HostMatch::Any, format!("/service-{i}/v1/"), i))
        .collect();
    routes.push((HostMatch::parse(Some("*.example.com")), "/api/".into(), n));
    routes.push((HostMatch::Any, "/".into(), n + 1));
    RouteTable::new(routes)
}

fn bench_routes(c: &mut Criterion) {
    for n in [2usize, 20, 200] {
        let t = route_table(n);
        c.bench_function(&format!("route_find/{n}_routes/catch_all"), |b| {
            b.iter(|| {
                t.find(
                    black_box(Some("shop.example.org:8080")),
                    black_box("/checkout/cart"),
                )
            })
        });
        c.bench_function(&format!("route_find/{n}_routes/wildcard_host"), |b| {
            b.iter(|| t.find(black_box(Some("a.example.com")), black_box("/api/users/7")))
        });
    }
}

fn bench_request_id(c: &mut Criterion) {
    c.bench_function("request_id/generate", |b| b.iter(request_id::generate));
    c.bench_function("request_id/accept_client", |b| {
        b.iter(|| {
            request_id::accept_or_generate(black_box(Some(b"3f6c1a2e-5b7d-4c8e-9a0b-1c2d3e4f5a6b")))
        })
    });
}

fn bench_headers(c: &mut Criterion) {
    let mut base = RequestHeader::build("GET", b"/api/users/7", None).unwrap();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("authorization", "Bearer abc"),
        ("connection", "keep-alive"),
    ] {
        base.append_header(k, v).unwrap();
    }
    let ip = Some("10.1.2.3".parse().unwrap());
    c.bench_function("headers/upstream_request_rewrite", |b| {
        b.iter_batched(
            || base.clone(),
            |mut r| {
                headers::strip_request_hop_by_hop(&mut r, false);
                headers::set_forwarded(&mut r, ip, Some("api.example.com"));
                r
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn bench_header_parts(c: &mut Criterion) {
    let mut base = RequestHeader::build("GET", b"/api/users/7", None).unwrap();
    base.append_header("host", "api.example.com").unwrap();
    base.append_header("user-agent", "bench/1.0").unwrap();
    let ip = Some("10.1.2.3".parse().unwrap());
    c.bench_function("headers/strip_hop_by_hop_none_present", |b| {
        b.iter_batched(
            || base.clone(),
            |mut r| {
                headers::strip_request_hop_by_hop(&mut r, false);
                r
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("headers/set_forwarded", |b| {
        b.iter_batched(
            || base.clone(),
            |mut r| {
                headers::set_forwarded(&mut r, ip, Some("api.example.com"));
                r
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("headers/clone_only", |b| {
        b.iter_batched(|| base.clone(), |r| r, criterion::BatchSize::SmallInput)
    });
}

fn group(balance: tollgate::upstream::Balance, n: u16) -> tollgate::upstream::UpstreamGroup {
    use tollgate::upstream::{breaker::Breaker, Endpoint, HashOn, Timeouts, UpstreamGroup};
    let t = Timeouts {
        connect: std::time::Duration::from_secs(1),
        read: std::time::Duration::from_secs(1),
        write: std::time::Duration::from_secs(1),
        idle: std::time::Duration::from_secs(1),
    };
    let endpoints = (0..n)
        .map(|i| {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 3000 + i).parse().unwrap();
            Endpoint::new(addr.to_string(), "127.0.0.1", addr, None, &t).with(
                1 + u32::from(i % 3),
                std::sync::Arc::new(Breaker::new(
                    3,
                    std::time::Duration::from_secs(1),
                    std::time::Duration::from_secs(30),
                )),
            )
        })
        .collect();
    UpstreamGroup::new("app".into(), endpoints, balance, HashOn::Tenant, 3)
}

fn bench_select(c: &mut Criterion) {
    use tollgate::upstream::Balance;
    for (name, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("weighted", Balance::Weighted),
        ("consistent_hash", Balance::ConsistentHash),
    ] {
        let g = group(balance, 4);
        c.bench_function(&format!("upstream_select/{name}/4_endpoints"), |b| {
            b.iter(|| g.select(black_box(b"tenant-42"), black_box(&[]), black_box(1)))
        });
    }
    // What a request's first attempt asks (`select_usable`): on the one-endpoint group of a
    // sidecar in front of its app, and on four endpoints.
    for n in [1, 4] {
        let g = group(Balance::RoundRobin, n);
        c.bench_function(
            &format!("upstream_select_usable/round_robin/{n}_endpoints"),
            |b| b.iter(|| g.select_usable(black_box(b""), black_box(&[]), black_box(1))),
        );
    }
    let g = group(Balance::RoundRobin, 4);
    c.bench_function("upstream_select/round_robin/peer_clone", |b| {
        b.iter(|| g.endpoints[g.select(b"", &[], 1)].peer())
    });
}

criterion_group!(
    benches,
    bench_routes,
    bench_request_id,
    bench_headers,
    bench_header_parts,
    bench_select
);
criterion_main!(benches);
