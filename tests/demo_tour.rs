//! The first run (`scripts/demo.sh`): the script is started as a newcomer starts it (on free
//! ports, with the binary under test), and every command line of the tour it prints is run as
//! printed, in order, with `bash -c`. Each must show what the tour says it shows: a 429 with
//! `Retry-After` and `RateLimit` after the burst, MISS then HIT then UPDATING, gzip and the
//! opt-out, no failed request after an upstream is killed, the metrics, the config check.

mod common;

use common::{bin, free_addr};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `scripts/demo.sh` in its own process group, killed with everything it started on drop.
struct Demo {
    child: Child,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this test created; no memory is touched.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Runs one tour line as a user would paste it; its stdout and stderr together.
fn run(line: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", line])
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "`{line}` failed: {text}");
    text
}

/// The value of `"generated_at"` in the output of the cache lines.
fn generated_at(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("\"generated_at\": "))
        .unwrap_or_else(|| panic!("no generated_at in {out}"))
}

fn cache_status(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-cache-status: ")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no x-cache-status in {out}"))
}

fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn every_line_of_the_demo_tour_works_as_printed() {
    let (proxy, admin, app1, app2) = (free_addr(), free_addr(), free_addr(), free_addr());
    let root = env!("CARGO_MANIFEST_DIR");
    let mut child = Command::new("bash")
        .arg(format!("{root}/scripts/demo.sh"))
        .env("TOLLGATE_BIN", bin())
        .env("TOLLGATE_LISTEN", proxy.to_string())
        .env("TOLLGATE_ADMIN_LISTEN", admin.to_string())
        .env("APP_ADDR", app1.to_string())
        .env("APP2_ADDR", app2.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start scripts/demo.sh");
    let stdout = child.stdout.take().expect("stdout");
    let _demo = Demo { child };

    // The tour, up to its last line.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut tour = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the tour did not end; printed so far: {tour:#?}"));
        let end = line.starts_with("Ctrl-C stops it all");
        tour.push(line);
        if end {
            break;
        }
    }
    // Command lines are indented two spaces; explanations are not, or by three.
    let lines: Vec<String> = tour
        .iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        lines.len(),
        10,
        "the tour's command lines changed: update this test with them: {lines:#?}"
    );
    let [hello, limit, cached, stale, gzip, opt_out, kill, failover, metrics, check] =
        <[String; 10]>::try_from(lines).unwrap();

    // 1. Proxied, with a request id, taking turns over the two upstreams.
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let out = run(&hello);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.to_ascii_lowercase().contains("x-request-id: "), "{out}");
        served_by.insert(
            out.lines()
                .find_map(|l| l.strip_prefix("x-served-by: "))
                .unwrap_or_else(|| panic!("no x-served-by in {out}"))
                .to_string(),
        );
    }
    assert_eq!(served_by, ["app-1", "app-2"].map(String::from).into());

    // 2. Three allowed, the fourth 429 with Retry-After and the RateLimit fields.
    let out = run(&limit).to_ascii_lowercase();
    let statuses: Vec<&str> = out.lines().filter(|l| l.starts_with("http/1.1")).collect();
    assert_eq!(
        statuses,
        [
            "http/1.1 200 ok",
            "http/1.1 200 ok",
            "http/1.1 200 ok",
            "http/1.1 429 too many requests"
        ],
        "{out}"
    );
    let refused = out.split("http/1.1 429").nth(1).expect("a 429");
    for field in ["retry-after: ", "ratelimit-policy: ", "ratelimit: "] {
        assert!(refused.contains(field), "no {field} on the 429: {out}");
    }

    // 3. MISS, then HIT with the same body; past the TTL, UPDATING with the old body, and then a
    // fresh one.
    let first = run(&cached);
    assert_eq!(cache_status(&first), "miss", "{first}");
    let second = run(&cached);
    assert_eq!(cache_status(&second), "hit", "{second}");
    assert_eq!(generated_at(&first), generated_at(&second));
    let out = run(&stale);
    assert_eq!(cache_status(&out), "updating", "{out}");
    assert_eq!(generated_at(&out), generated_at(&first));
    assert!(
        poll(Duration::from_secs(5), || {
            let out = run(&cached);
            cache_status(&out) == "hit" && generated_at(&out) != generated_at(&first)
        }),
        "the stale entry was never refreshed"
    );

    // 4. gzip when accepted; the opt-out header gets the body as sent, over 1 KiB.
    let out = run(&gzip).to_ascii_lowercase();
    assert!(out.contains("content-encoding: gzip"), "{out}");
    let out = run(&opt_out).to_ascii_lowercase();
    assert!(!out.contains("content-encoding"), "{out}");
    let length: usize = out
        .trim()
        .strip_prefix("content-length: ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {out}"));
    assert!(length > 1024, "{out}");

    // 5. app-2 killed: every request of the loop still gets 200.
    assert!(kill.starts_with("kill "), "{kill}");
    run(&kill);
    let out = run(&failover);
    let codes: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(codes, ["200"; 10], "{out}");

    // 6. The metrics the tour points at, and app-2 taken out by the health check.
    // `tollgate_upstream_retries_total` shows only when a request met app-2 gone before the
    // health check took it out (a race the tour does not promise to win either way).
    let out = run(&metrics);
    for name in [
        "tollgate_ratelimit_decisions_total{",
        "tollgate_cache_requests_total{",
        "tollgate_compression_output_bytes_total{",
        "tollgate_upstream_endpoint_healthy{",
    ] {
        assert!(out.contains(name), "no {name} in {out}");
    }
    assert!(
        out.contains(r#"decision="limited",policy="burst",tier="demo"} 1"#),
        "{out}"
    );
    let app2_down =
        format!(r#"tollgate_upstream_endpoint_healthy{{endpoint="{app2}",upstream="app"}} 0"#);
    assert!(
        poll(Duration::from_secs(5), || run(&metrics)
            .contains(&app2_down)),
        "app-2 never marked unhealthy: {}",
        run(&metrics)
    );

    let out = run(&check);
    assert!(out.contains("conf/tollgate.yaml: ok: "), "{out}");
}
