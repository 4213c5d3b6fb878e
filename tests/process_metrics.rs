//! `/metrics` exposes the standard `process_*` series (the prometheus crate's process
//! collector), with values that describe the running tollgate.

mod common;

use common::{metric_value, Config, Group, Route, Upstream};

#[tokio::test]
async fn metrics_expose_the_standard_process_series() {
    let app = Upstream::start().await;
    let tg = Config::new()
        .upstream(Group::new("app", [app.addr()]))
        .route(Route::prefix("/").name("api").to("app"))
        .start()
        .await;
    let text = tg.metrics().await;
    let value = |name: &str| {
        metric_value(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert!(value("process_cpu_seconds_total") >= 0.0);
    // A real process: megabytes resident, a handful of fds, started within the last hour.
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
}
