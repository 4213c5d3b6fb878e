//! `observability.status_code_label: true` adds the exact status code to
//! `tollgate_http_requests_total` next to `status_class`; without it the counter has no
//! `status` label. Both proxied answers and tollgate's own (404) are counted by code.

mod common;

use common::{Config, Group, Reply, Route, Upstream};

#[tokio::test]
async fn the_exact_status_label_is_opt_in() {
    let app = Upstream::start().await;
    app.set_reply(Reply::ok("busy").status(503));
    let route = || Route::prefix("/api/").name("api").to("app");

    let exact = Config::new()
        .upstream(Group::new("app", [app.addr()]).retry("{ attempts: 1 }"))
        .route(route())
        .observability("status_code_label", true)
        .start()
        .await;
    exact.get("/api/x").await.assert_status(503);
    exact.get("/nowhere").await.assert_status(404);
    let by_code = |route: &'static str, code: &'static str, class: &'static str| {
        [
            ("route", route),
            ("method", "GET"),
            ("status", code),
            ("status_class", class),
        ]
    };
    exact
        .expect_metric(
            "tollgate_http_requests_total",
            &by_code("api", "503", "5xx"),
            1.0,
        )
        .await;
    exact
        .expect_metric(
            "tollgate_http_requests_total",
            &by_code("none", "404", "4xx"),
            1.0,
        )
        .await;

    let classes_only = Config::new()
        .upstream(Group::new("app", [app.addr()]).retry("{ attempts: 1 }"))
        .route(route())
        .start()
        .await;
    classes_only.get("/api/x").await.assert_status(503);
    classes_only
        .expect_metric(
            "tollgate_http_requests_total",
            &[("route", "api"), ("status_class", "5xx")],
            1.0,
        )
        .await;
    let text = classes_only.metrics().await;
    let counted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tollgate_http_requests_total{"))
        .collect();
    assert!(!counted.is_empty());
    assert!(
        counted.iter().all(|l| !l.contains("status=\"")),
        "a status label without the option: {counted:?}"
    );
}
