//! Response header values for a rate-limit [`Decision`]: the IETF `RateLimit-Policy` and
//! `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers), `Retry-After`, and the legacy
//! `X-RateLimit-*` trio many clients still read.
//!
//! Pure functions, one `String` each, sized up front (64 bytes fits every value): they run on
//! every response.
//! The names are the draft's: `q` quota, `w` window seconds, `r` remaining, `t` seconds to reset.
//! The burst policy is announced as `q=burst;w=1` and the daily one as `w=86400`.

use super::{Decision, Limits};

/// Field name of the quota policies in force.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// Field name of the caller's remaining quota.
pub const RATELIMIT: &str = "ratelimit";
/// Field name of the wait before retrying, on a refusal.
pub const RETRY_AFTER: &str = "retry-after";

/// `RateLimit-Policy`, e.g. `"burst";q=20;w=1, "daily";q=1000;w=86400` (no daily item when
/// unlimited). It depends on the limits only: callers may build it once per policy and reuse it.
pub fn policy_header(limits: &Limits) -> String {
    let mut v = String::with_capacity(64);
    push_policy(&mut v, limits);
    v
}

/// Appends the items of [`policy_header`] to `out` (after a `, ` when `out` holds items).
pub fn push_policy(out: &mut String, limits: &Limits) {
    separate(out);
    out.push_str("\"burst\";q=");
    push_u64(out, u64::from(limits.burst));
    out.push_str(";w=1");
    if let Some(daily) = limits.daily {
        out.push_str(", \"daily\";q=");
        push_u64(out, daily);
        out.push_str(";w=86400");
    }
}

/// `RateLimit`, e.g. `"burst";r=19;t=1, "daily";r=999;t=43200` (no daily item when unlimited).
pub fn ratelimit_header(d: &Decision) -> String {
    let mut v = String::with_capacity(64);
    push_ratelimit(&mut v, d);
    v
}

/// Appends the items of [`ratelimit_header`] to `out` (after a `, ` when `out` holds items).
pub fn push_ratelimit(out: &mut String, d: &Decision) {
    separate(out);
    out.push_str("\"burst\";r=");
    push_u64(out, d.burst_remaining);
    out.push_str(";t=");
    push_u64(out, d.burst_reset_secs);
    if let Some(remaining) = d.daily_remaining {
        out.push_str(", \"daily\";r=");
        push_u64(out, remaining);
        out.push_str(";t=");
        push_u64(out, d.daily_reset_secs);
    }
}

/// Appends the token budgets' items of `RateLimit-Policy` to `out` (after a `, ` when `out`
/// already holds items): `"tokens";q=<per minute>;w=60` and `"tokens-daily";q=<per day>;w=86400`.
pub fn push_token_policy(out: &mut String, limits: &super::tokens::TokenLimits) {
    if let Some(q) = limits.per_minute {
        separate(out);
        out.push_str("\"tokens\";q=");
        push_u64(out, q);
        out.push_str(";w=60");
    }
    if let Some(q) = limits.per_day {
        separate(out);
        out.push_str("\"tokens-daily\";q=");
        push_u64(out, q);
        out.push_str(";w=86400");
    }
}

/// Appends the token budgets' items of `RateLimit` to `out` (after a `, ` when `out` already
/// holds items): `"tokens";r=<left>;t=<secs to full>` and
/// `"tokens-daily";r=<left today>;t=<secs to midnight>`.
pub fn push_token_items(out: &mut String, d: &super::tokens::TokenDecision) {
    if let Some(r) = d.minute_remaining {
        separate(out);
        out.push_str("\"tokens\";r=");
        push_u64(out, r);
        out.push_str(";t=");
        push_u64(out, d.minute_reset_secs);
    }
    if let Some(r) = d.day_remaining {
        separate(out);
        out.push_str("\"tokens-daily\";r=");
        push_u64(out, r);
        out.push_str(";t=");
        push_u64(out, d.day_reset_secs);
    }
}

/// The `, ` between two items of a list field.
fn separate(out: &mut String) {
    if !out.is_empty() {
        out.push_str(", ");
    }
}

/// `Retry-After` in seconds, for a refusal only.
pub fn retry_after(d: &Decision) -> Option<String> {
    (!d.allowed).then(|| decimal(d.retry_after_secs))
}

/// The legacy fields, about the burst bucket: `X-RateLimit-Limit` (burst),
/// `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until the bucket is full).
pub fn x_ratelimit(d: &Decision, limits: &Limits) -> [(&'static str, String); 3] {
    [
        ("x-ratelimit-limit", decimal(u64::from(limits.burst))),
        ("x-ratelimit-remaining", decimal(d.burst_remaining)),
        ("x-ratelimit-reset", decimal(d.burst_reset_secs)),
    ]
}

/// Append `n` in decimal (`itoa`: no `std::fmt` machinery, no per-digit pushes).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn decimal(n: u64) -> String {
    let mut s = String::with_capacity(20);
    push_u64(&mut s, n);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Policy;

    const FREE: Limits = Limits {
        rps: 10.0,
        burst: 20,
        daily: Some(1000),
    };
    const ENTERPRISE: Limits = Limits {
        rps: 2000.0,
        burst: 5000,
        daily: None,
    };

    fn allowed(daily_remaining: Option<u64>) -> Decision {
        Decision {
            allowed: true,
            refused_by: None,
            burst_remaining: 19,
            burst_reset_secs: 1,
            daily_remaining,
            daily_reset_secs: 43200,
            retry_after_secs: 0,
        }
    }

    #[test]
    fn policy_lists_burst_then_daily() {
        assert_eq!(
            policy_header(&FREE),
            r#""burst";q=20;w=1, "daily";q=1000;w=86400"#
        );
    }

    #[test]
    fn policy_omits_unlimited_daily() {
        assert_eq!(policy_header(&ENTERPRISE), r#""burst";q=5000;w=1"#);
    }

    #[test]
    fn ratelimit_reports_remaining_and_reset() {
        assert_eq!(
            ratelimit_header(&allowed(Some(999))),
            r#""burst";r=19;t=1, "daily";r=999;t=43200"#
        );
        assert_eq!(ratelimit_header(&allowed(None)), r#""burst";r=19;t=1"#);
    }

    #[test]
    fn retry_after_only_on_refusal() {
        assert_eq!(retry_after(&allowed(None)), None);
        let refused = Decision {
            allowed: false,
            refused_by: Some(Policy::Daily),
            burst_remaining: 20,
            burst_reset_secs: 0,
            daily_remaining: Some(0),
            daily_reset_secs: 43200,
            retry_after_secs: 43200,
        };
        assert_eq!(retry_after(&refused).as_deref(), Some("43200"));
        assert_eq!(
            ratelimit_header(&refused),
            r#""burst";r=20;t=0, "daily";r=0;t=43200"#
        );
    }

    #[test]
    fn legacy_fields_describe_the_burst_bucket() {
        assert_eq!(
            x_ratelimit(&allowed(Some(999)), &FREE),
            [
                ("x-ratelimit-limit", "20".to_string()),
                ("x-ratelimit-remaining", "19".to_string()),
                ("x-ratelimit-reset", "1".to_string()),
            ]
        );
    }

    #[test]
    fn decimals_cover_the_u64_range() {
        for n in [0, 7, 10, 86_400, u64::MAX] {
            assert_eq!(decimal(n), n.to_string());
        }
    }

    #[test]
    fn policy_names() {
        assert_eq!(Policy::Burst.name(), "burst");
        assert_eq!(Policy::Daily.name(), "daily");
    }
}
