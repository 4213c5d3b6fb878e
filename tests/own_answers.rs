//! tollgate's own answers (404 no route, 502 upstream unreachable) carry the same timing
//! header as proxied responses, so a client or a log pipeline that reads `X-Response-Time`
//! sees it whoever answered.

mod common;

use common::{closed_addr, Config, Got, Group, Route};

fn response_time_ms(r: &Got) -> f64 {
    let v = r
        .header_opt("x-response-time")
        .unwrap_or_else(|| panic!("no X-Response-Time on {r:?}"));
    v.strip_suffix("ms").expect("ends in ms").parse().unwrap()
}

#[tokio::test]
async fn own_error_answers_carry_x_response_time() {
    let tg = Config::new()
        .upstream(Group::new("app", [closed_addr()]).retry("{ attempts: 1 }"))
        .route(Route::prefix("/api/").name("api").to("app"))
        .start()
        .await;
    let not_found = tg.get("/elsewhere").await;
    assert!(response_time_ms(not_found.assert_status(404)) >= 0.0);
    let unreachable = tg.get("/api/x").await;
    assert!(response_time_ms(unreachable.assert_status(502)) >= 0.0);
}
