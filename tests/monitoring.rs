//! Checks of `deploy/monitoring/` with promtool: the Prometheus scrape config (and its commented
//! Kubernetes example), the alert and recording rules, their unit tests, and every PromQL
//! expression of the Grafana dashboard. Also checks that these files only name metrics tollgate
//! exports.
//!
//! promtool is required: these tests fail, never skip, when it is missing. It comes from Debian's
//! `prometheus` package, which `scripts/setup.sh` installs when run as root.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMTOOL_MISSING: &str =
    "promtool not found: install Debian's `prometheus` package (scripts/setup.sh does it as root)";

/// Every series name tollgate exports (histograms as their `_bucket`/`_sum`/`_count` series).
/// Only names starting with `tollgate_` are checked (`up` and other Prometheus series are not).
const METRICS: &[&str] = &[
    "tollgate_http_request_duration_seconds_bucket",
    "tollgate_http_request_duration_seconds_sum",
    "tollgate_http_request_duration_seconds_count",
    "tollgate_http_requests_total",
    "tollgate_http_requests_in_flight",
    "tollgate_http_response_body_bytes_total",
    "tollgate_upstream_duration_seconds_bucket",
    "tollgate_upstream_duration_seconds_sum",
    "tollgate_upstream_duration_seconds_count",
    "tollgate_upstream_requests_total",
    "tollgate_ratelimit_decisions_total",
    "tollgate_ratelimit_tracked_keys",
    "tollgate_ratelimit_store_decisions_total",
    "tollgate_redis_up",
    "tollgate_cache_shared_lookups_total",
    "tollgate_cache_purge_bus_lag_seconds_bucket",
    "tollgate_cache_purge_bus_resyncs_total",
    "tollgate_cache_purge_bus_pending",
    "tollgate_cache_purge_bus_connected",
    "tollgate_llm_tokens_total",
    "tollgate_llm_cached_tokens_total",
    "tollgate_llm_cost_usd_total",
    "tollgate_llm_cost_saved_usd_total",
    "tollgate_llm_time_to_first_token_seconds_bucket",
    "tollgate_streams_active",
    "tollgate_config_reloads_total",
    "tollgate_access_log_lines_total",
    "tollgate_build_info",
];

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn read(name: &str) -> String {
    let p = monitoring_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Runs promtool in `dir`: whether it exited 0, and its stdout and stderr.
fn run_promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{PROMTOOL_MISSING}"),
        Err(e) => panic!("running promtool {}: {e}", args.join(" ")),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs promtool in `dir` and asserts it exits 0; returns its stdout and stderr.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = run_promtool(dir, args);
    assert!(
        ok,
        "`promtool {}` in {} failed:\n{text}",
        args.join(" "),
        dir.display()
    );
    text
}

#[test]
fn prometheus_config_passes_promtool_check_config() {
    let out = promtool(&monitoring_dir(), &["check", "config", "prometheus.yml"]);
    // The config loads alerts.yml, so this checks the rule file is found from it.
    assert!(out.contains("1 rule files found"), "{out}");
}

#[test]
fn kubernetes_example_in_prometheus_config_is_valid() {
    let text = read("prometheus.yml");
    let mut block = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t == "# BEGIN kubernetes example" {
            inside = true;
        } else if t == "# END kubernetes example" {
            inside = false;
        } else if inside {
            let t = line.trim_start();
            let t = t.strip_prefix("# ").or_else(|| t.strip_prefix('#'));
            block.push(
                t.expect("every line of the example is commented")
                    .to_string(),
            );
        }
    }
    assert!(!inside, "no `# END kubernetes example` marker");
    let block = block.join("\n  ");
    assert!(
        block.contains("kubernetes_sd_configs"),
        "example not found:\n{block}"
    );
    assert!(block.contains("job_name: tollgate"), "{block}");

    let dir = tempfile::tempdir().unwrap();
    let write = |yaml: &str| {
        let config = format!("scrape_configs:\n  {yaml}\n");
        std::fs::write(dir.path().join("k8s.yml"), config).unwrap();
    };
    write(&block);
    let (ok, out) = run_promtool(dir.path(), &["check", "config", "k8s.yml"]);
    if !ok && out.contains("field kubernetes_sd_configs not found") {
        // Debian's promtool is built without Kubernetes discovery. Validate everything else
        // (the relabelling) with the discovery block swapped for a static target.
        let sd = "kubernetes_sd_configs:\n      - role: pod";
        assert!(block.contains(sd), "expected `{sd}` in:\n{block}");
        write(&block.replace(sd, "static_configs:\n      - targets: [\"127.0.0.1:9901\"]"));
        promtool(dir.path(), &["check", "config", "k8s.yml"]);
    } else {
        assert!(
            ok,
            "promtool rejects the Kubernetes example:\n{out}\n{block}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let out = promtool(&monitoring_dir(), &["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_unit_tests_pass() {
    let out = promtool(&monitoring_dir(), &["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Alert names in alerts.yml, in order.
fn alert_names() -> Vec<String> {
    let names: Vec<String> = read("alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect();
    assert!(!names.is_empty(), "no alerts in alerts.yml");
    names
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let tests = read("alerts_test.yml");
    // (alertname, fires) for each alert_rule_test case: `exp_alerts: []` is a quiet case.
    let mut cases = Vec::new();
    let mut current: Option<String> = None;
    for line in tests.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(exp) = t.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts without alertname");
            cases.push((name, exp.trim() != "[]"));
        }
    }
    let mut missing = Vec::new();
    for name in alert_names() {
        for fires in [true, false] {
            if !cases.iter().any(|(n, f)| *n == name && *f == fires) {
                missing.push(format!(
                    "{name} ({})",
                    if fires { "firing" } else { "quiet" }
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "alerts_test.yml lacks cases: {missing:?}"
    );
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json"))
        .expect("grafana-dashboard.json is not valid JSON")
}

#[test]
fn dashboard_is_importable_and_templated() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    assert_eq!(
        var("route")["definition"],
        "label_values(tollgate_http_requests_total, route)"
    );

    // Every panel with queries uses the templated data source.
    let mut panels: Vec<&Value> = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        panels.push(p);
    }
    let mut with_targets = 0;
    for p in panels {
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        with_targets += 1;
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            p["title"]
        );
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {}",
                p["title"]
            );
        }
    }
    assert!(
        with_targets >= 10,
        "only {with_targets} panels with queries"
    );
}

#[test]
fn every_dashboard_expr_parses() {
    let mut exprs = Vec::new();
    collect_exprs(&dashboard(), &mut exprs);
    assert!(
        exprs.len() >= 10,
        "only {} exprs found in the dashboard",
        exprs.len()
    );

    // Grafana's variables, replaced by what they would expand to.
    let mut rules = String::from("groups:\n  - name: grafana-dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("${route}", ".*")
            .replace("$route", ".*")
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        assert!(!e.contains('$'), "unknown Grafana variable left in: {e}");
        assert!(!e.trim().is_empty(), "empty expr in the dashboard");
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&e).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard_rules.yml"), &rules).unwrap();
    let out = promtool(dir.path(), &["check", "rules", "dashboard_rules.yml"]);
    assert!(
        out.contains(&format!("{} rules found", exprs.len())),
        "{out}\n{rules}"
    );
}

/// `tollgate_*` metric names used in `text`. Recording rule names (`level:tollgate_x:op`) are not
/// metric references and are skipped.
fn metric_refs(text: &str) -> Vec<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut refs = Vec::new();
    for (i, _) in text.match_indices("tollgate_") {
        if text[..i].chars().next_back().is_some_and(word) {
            continue;
        }
        let rest = &text[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if rest[end..].starts_with(':') {
            continue;
        }
        refs.push(rest[..end].to_string());
    }
    refs
}

#[test]
fn monitoring_files_only_name_metrics_tollgate_exports() {
    // The dashboard's panel descriptions name histograms by their base name: check its queries.
    let mut exprs = Vec::new();
    collect_exprs(&dashboard(), &mut exprs);
    let files = [
        ("alerts.yml", read("alerts.yml")),
        ("alerts_test.yml", read("alerts_test.yml")),
        ("grafana-dashboard.json queries", exprs.join("\n")),
    ];
    for (file, text) in files {
        let refs = metric_refs(&text);
        assert!(!refs.is_empty(), "{file} names no tollgate metric");
        let unknown: Vec<&String> = refs
            .iter()
            .filter(|r| !METRICS.contains(&r.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics tollgate does not export: {unknown:?}"
        );
    }
}
