//! tollgate's own answers (404 no route, 502 upstream unreachable) carry the same timing
//! header as proxied responses, so a client or a log pipeline that reads `X-Response-Time`
//! sees it whoever answered.

mod common;

use common::{closed_addr, Tollgate};

fn response_time_ms(r: &reqwest::Response) -> f64 {
    let v = r
        .headers()
        .get("x-response-time")
        .unwrap_or_else(|| panic!("no X-Response-Time on a {}", r.status()))
        .to_str()
        .unwrap()
        .to_string();
    v.strip_suffix("ms").expect("ends in ms").parse().unwrap()
}

#[tokio::test]
async fn own_error_answers_carry_x_response_time() {
    let dead = closed_addr();
    let tg = Tollgate::start(&format!(
        "upstreams:\n  app:\n    endpoints: [\"{dead}\"]\n    retry: {{ attempts: 1 }}\n\
         routes:\n  - name: api\n    match: {{ path_prefix: /api/ }}\n    upstream: app\n"
    ))
    .await;
    let not_found = tg.get("/elsewhere").await;
    assert_eq!(not_found.status(), 404);
    assert!(response_time_ms(&not_found) >= 0.0);
    let unreachable = tg.get("/api/x").await;
    assert_eq!(unreachable.status(), 502);
    assert!(response_time_ms(&unreachable) >= 0.0);
}
