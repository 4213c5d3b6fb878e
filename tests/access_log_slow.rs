//! Access log lines of requests at or over `slow_threshold` carry `"slow": true`; others
//! carry no `slow` field, so `grep '"slow":true'` finds exactly the slow ones.

mod common;

use common::{eventually, Config, Group, Reply, Route, Upstream};
use std::time::Duration;

#[tokio::test]
async fn slow_requests_are_marked_in_the_access_log() {
    let app = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .observability(
            "access_log",
            format!("{{ output: \"{}\", slow_threshold: 300ms }}", log.display()),
        )
        .start()
        .await;
    tg.get("/fast").await.assert_status(200);
    app.set_reply(Reply::default().delay(Duration::from_millis(400)));
    tg.get("/slow").await.assert_status(200);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let both = eventually(Duration::from_secs(5), || async {
        text().lines().count() >= 2
    })
    .await;
    assert!(both, "two access log lines expected, got:\n{}", text());
    let lines: Vec<serde_json::Value> = text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_path = |p: &str| lines.iter().find(|l| l["path"] == p).unwrap().clone();
    assert_eq!(by_path("/slow")["slow"], serde_json::Value::Bool(true));
    assert!(
        by_path("/fast").get("slow").is_none(),
        "{}",
        by_path("/fast")
    );
    assert_eq!(text().matches("\"slow\":true").count(), 1);
}
