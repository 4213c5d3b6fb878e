//! RFC 9111 decisions as a shared cache, written as pure functions over headers.
//!
//! Precedence, highest first:
//! 1. The origin forbids storing: `Cache-Control: no-store` or `private`, `Vary: *`. Never stored.
//! 2. The route forbids storing: status not in `statuses`, `Set-Cookie` without
//!    `store_set_cookie`. (Requests with `Authorization` outside a tenant scope never reach
//!    this: they bypass the cache.)
//! 3. Freshness from the origin: `no-cache` (stored, revalidated on every use), `s-maxage`,
//!    `max-age`, then `Expires` (minus `Date`), all minus the response's age on arrival
//!    (`Age`, or `Date` in the past).
//! 4. The route's `ttl`, only when the origin gave none of the above.
//! 5. Without any freshness, a response with a validator (`ETag`, `Last-Modified`) is stored
//!    already stale and revalidated on each use; one with no validator is not stored.
//!
//! Stale windows: the origin's `stale-while-revalidate` / `stale-if-error` directives win over
//! the route's; `must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache` forbid serving
//! stale at all.

use super::RoutePolicy;
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// Why a response was not stored: the `detail` of `Cache-Status` and a metrics-safe label.
pub fn reason_label(reason: &NoCacheReason) -> &'static str {
    match reason {
        NoCacheReason::OriginNotCache => "origin-no-store",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::Custom(s) => s,
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::UpstreamError => "upstream-error",
        _ => "not-stored",
    }
}

fn header_str(resp: &ResponseHeader, name: http::header::HeaderName) -> Option<&str> {
    resp.headers.get(name).and_then(|v| v.to_str().ok())
}

fn http_date(resp: &ResponseHeader, name: http::header::HeaderName) -> Option<SystemTime> {
    let mut values = resp.headers.get_all(&name).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

/// The response's age when it arrived (RFC 9111 §4.2.3, without the request-time correction:
/// the upstream hop is too short to matter at one-second resolution).
pub fn initial_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let age_value = header_str(resp, http::header::AGE)
        .and_then(|a| a.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let apparent = http_date(resp, http::header::DATE)
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    age_value.max(apparent)
}

/// Whether the route and the origin allow storing this response, and if so for how long it is
/// fresh and may be served stale.
pub fn decide(policy: &RoutePolicy, resp: &ResponseHeader, now: SystemTime) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    if !policy.statuses.contains(&status) {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|n| n.trim() == "*"))
    }) {
        return Uncacheable(NoCacheReason::Custom("vary-star"));
    }
    if !policy.store_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let cc = CacheControl::from_resp_headers(resp);
    if cc.as_ref().is_some_and(|c| c.no_store() || c.private()) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    let no_cache = cc.as_ref().is_some_and(|c| c.no_cache());
    let has_validator = resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED);

    // Freshness lifetime: origin directives, then Expires, then the route's ttl.
    let lifetime = cc
        .as_ref()
        .and_then(|c| c.fresh_duration())
        .or_else(|| {
            resp.headers.get(http::header::EXPIRES)?;
            // An invalid or repeated Expires means "already expired" (RFC 9111 §5.3).
            let Some(at) = http_date(resp, http::header::EXPIRES) else {
                return Some(Duration::ZERO);
            };
            let base = http_date(resp, http::header::DATE).unwrap_or(now);
            Some(at.duration_since(base).unwrap_or_default())
        })
        .or(policy.ttl);
    let lifetime = match lifetime {
        Some(l) => l,
        None if has_validator => Duration::ZERO,
        None => return Uncacheable(NoCacheReason::Custom("no-freshness")),
    };
    if lifetime.is_zero() && !has_validator {
        // Stale on arrival and nothing to revalidate with: storing it would never help.
        return Uncacheable(NoCacheReason::Custom("no-freshness"));
    }

    let age = initial_age(resp, now);
    let fresh_until = match lifetime.checked_sub(age) {
        Some(left) if !left.is_zero() => now + left,
        // Make sure it reads as stale (is_fresh compares strictly).
        _ => now - Duration::from_secs(1),
    };
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let (swr, sie) = if no_cache {
        (0, 0)
    } else {
        (
            cc.as_ref()
                .and_then(|c| c.serve_stale_while_revalidate_duration())
                .map_or(policy.stale_while_revalidate, secs),
            cc.as_ref()
                .and_then(|c| c.serve_stale_if_error_duration())
                .map_or(policy.stale_if_error, secs),
        )
    };
    let mut header = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
    if !age.is_zero() {
        // Hits report the age the response had on arrival plus its time here.
        meta.set_epoch_override(now - age);
    }
    RespCacheable::Cacheable(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RouteCacheConfig;

    fn policy(ttl: Option<u64>, swr: u64, sie: u64) -> RoutePolicy {
        use crate::config::units::ConfigDuration;
        RoutePolicy::new(&RouteCacheConfig {
            ttl: ttl.map(ConfigDuration::from_secs),
            stale_while_revalidate: ConfigDuration::from_secs(swr),
            stale_if_error: ConfigDuration::from_secs(sie),
            ..Default::default()
        })
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn meta(r: RespCacheable) -> CacheMeta {
        match r {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(why) => panic!("uncacheable: {why:?}"),
        }
    }

    fn reason(r: RespCacheable) -> &'static str {
        match r {
            RespCacheable::Cacheable(_) => panic!("cacheable"),
            RespCacheable::Uncacheable(why) => reason_label(&why),
        }
    }

    fn fresh_secs(m: &CacheMeta, now: SystemTime) -> i64 {
        match m.fresh_until().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    #[test]
    fn origin_freshness_and_precedence() {
        let now = SystemTime::now();
        let p = policy(Some(60), 30, 300);
        let m = meta(decide(
            &p,
            &resp(200, &[("cache-control", "max-age=10")]),
            now,
        ));
        assert_eq!(fresh_secs(&m, now), 10, "max-age beats the route ttl");
        let m = meta(decide(
            &p,
            &resp(200, &[("cache-control", "max-age=10, s-maxage=20")]),
            now,
        ));
        assert_eq!(fresh_secs(&m, now), 20, "s-maxage beats max-age");
        assert_eq!(m.stale_while_revalidate_sec(), 0, "s-maxage forbids stale");
        let m = meta(decide(&p, &resp(200, &[]), now));
        assert_eq!(
            fresh_secs(&m, now),
            60,
            "route ttl when the origin is silent"
        );
        assert_eq!(m.stale_while_revalidate_sec(), 30);
        assert_eq!(m.stale_if_error_sec(), 300);
        let m = meta(decide(
            &p,
            &resp(
                200,
                &[("cache-control", "max-age=5, stale-while-revalidate=7")],
            ),
            now,
        ));
        assert_eq!(
            m.stale_while_revalidate_sec(),
            7,
            "origin window beats route's"
        );
        let m = meta(decide(
            &p,
            &resp(200, &[("cache-control", "max-age=5, must-revalidate")]),
            now,
        ));
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (0, 0)
        );
    }

    #[test]
    fn expires_and_age() {
        let now = SystemTime::now();
        let p = policy(None, 0, 0);
        let date = httpdate::fmt_http_date(now);
        let exp = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let m = meta(decide(
            &p,
            &resp(200, &[("date", &date), ("expires", &exp)]),
            now,
        ));
        assert!((99..=100).contains(&fresh_secs(&m, now)));
        let m = meta(decide(
            &p,
            &resp(200, &[("cache-control", "max-age=100"), ("age", "30")]),
            now,
        ));
        assert_eq!(fresh_secs(&m, now), 70, "age on arrival is used up");
        assert!(m.age().as_secs() >= 30, "hits report the age on arrival");
        let m = meta(decide(
            &p,
            &resp(200, &[("expires", "garbage"), ("etag", "\"x\"")]),
            now,
        ));
        assert!(fresh_secs(&m, now) < 0, "invalid Expires means expired");
    }

    #[test]
    fn what_is_never_stored() {
        let now = SystemTime::now();
        let p = policy(Some(60), 0, 0);
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("cache-control", "no-store")], "origin-no-store"),
            (
                &[("cache-control", "private, max-age=60")],
                "origin-no-store",
            ),
            (&[("vary", "*")], "vary-star"),
            (&[("set-cookie", "a=b")], "set-cookie"),
        ];
        for (headers, why) in cases {
            assert_eq!(reason(decide(&p, &resp(200, headers), now)), *why);
        }
        assert_eq!(reason(decide(&p, &resp(500, &[]), now)), "status");
        let bare = policy(None, 0, 0);
        assert_eq!(reason(decide(&bare, &resp(200, &[]), now)), "no-freshness");
    }

    #[test]
    fn validators_without_freshness_are_stored_stale() {
        let now = SystemTime::now();
        let p = policy(None, 30, 30);
        let m = meta(decide(&p, &resp(200, &[("etag", "\"v1\"")]), now));
        assert!(!m.is_fresh(now));
        let m = meta(decide(
            &p,
            &resp(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]),
            now,
        ));
        assert!(!m.is_fresh(now));
        assert_eq!(m.stale_while_revalidate_sec(), 0, "no-cache forbids stale");
        assert_eq!(
            reason(decide(
                &p,
                &resp(200, &[("cache-control", "no-cache")]),
                now
            )),
            "no-freshness"
        );
    }
}
