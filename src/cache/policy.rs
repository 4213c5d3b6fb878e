//! RFC 9111 decisions as a shared cache, written as pure functions over headers.
//!
//! Precedence, highest first:
//! 1. The origin forbids storing: `no-store` or `private` in the directives that apply (below),
//!    `Vary: *`. Never stored.
//! 2. The route forbids storing: status not in `statuses`, `Set-Cookie` without
//!    `store_set_cookie`. (Requests with `Authorization` in the shared scope never reach this
//!    unless the route has `store_authorized`, and then only with a response that allows it:
//!    [`shareable_when_authorized`].)
//! 3. Freshness from the origin: `no-cache` (stored, revalidated on every use), `s-maxage`,
//!    `max-age`, then `Expires` (minus `Date`), all minus the response's age on arrival
//!    (`Age`, or `Date` in the past).
//! 4. The route's `ttl`, only when the origin gave none of the above.
//! 5. Without any freshness, a response with a validator (`ETag`, `Last-Modified`) is stored
//!    already stale and revalidated on each use; one with no validator is not stored.
//!
//! The directives that apply ([`directives`], RFC 9213): those of the first *targeted* field
//! the origin sent with a non-empty value, the route's `targeted_field` and then
//! `CDN-Cache-Control`; `Cache-Control` and `Expires` are then ignored. Without one, the
//! response's `Cache-Control`.
//!
//! Stale windows: the origin's `stale-while-revalidate` / `stale-if-error` directives win over
//! the route's; `must-revalidate`, `proxy-revalidate`, `s-maxage` and `no-cache` forbid serving
//! stale at all.
//!
//! A `304 Not Modified` updates the stored header with its own fields ([`merge_not_modified`],
//! §4.3.4) before the same decision runs again on the result.

use super::RoutePolicy;
use pingora_cache::cache_control::{
    CacheControl, InterpretCacheControl, DELTA_SECONDS_OVERFLOW_DURATION,
};
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

/// `detail` (and disable reason) of a response to a request with `Authorization` that does not
/// allow storing it in a shared cache (RFC 9111 §3.5).
pub const AUTHORIZATION: &str = "authorization";

/// The targeted field every CDN-like cache honours (RFC 9213 §3).
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

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

/// The cache directives that apply to tollgate for one response.
pub struct Directives {
    /// The parsed directives, if the response has any.
    pub cc: Option<CacheControl>,
    /// They come from a targeted field (RFC 9213), so `Expires` does not count either.
    pub targeted: bool,
}

/// The directives for tollgate (RFC 9213 §2.1): the first field of the target list (the route's
/// `targeted_field`, then `CDN-Cache-Control`) that is present with at least one directive,
/// else `Cache-Control`. A targeted field is parsed with Pingora's `Cache-Control` parser (§2.2
/// allows it), so one that yields no directive (empty, or garbage) counts as absent.
pub fn directives(policy: &RoutePolicy, resp: &ResponseHeader) -> Directives {
    let targets = policy
        .targeted_field
        .iter()
        .map(http::HeaderName::as_str)
        .chain([CDN_CACHE_CONTROL]);
    for name in targets {
        if let Some(cc) = CacheControl::from_resp_headers_named(name, resp) {
            if !cc.directives.is_empty() {
                return Directives {
                    cc: Some(cc),
                    targeted: true,
                };
            }
        }
    }
    Directives {
        cc: CacheControl::from_resp_headers(resp),
        targeted: false,
    }
}

/// Whether a response to a request with `Authorization` may be stored in (and served from) a
/// shared cache: its directives say `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5;
/// Pingora's `allow_caching_authorized_req`). The directives are the ones that apply to
/// tollgate, so a targeted field decides this too.
pub fn shareable_when_authorized(policy: &RoutePolicy, resp: &ResponseHeader) -> bool {
    directives(policy, resp)
        .cc
        .is_some_and(|c| c.allow_caching_authorized_req())
}

/// The `Age` field (RFC 9111 §5.1) as delta-seconds: the first member of its first line (a
/// list, `Age: 30, 5`, counts as its first member, as a field sent twice does). Values too large
/// to represent count as Pingora's overflow value, 2^31 - 1 s (§1.2.2). Anything that is not
/// all digits (a sign, a fraction, nothing) is ignored, as if the field were absent.
pub fn age_value(resp: &ResponseHeader) -> Option<Duration> {
    let first = header_str(resp, http::header::AGE)?.split(',').next()?;
    let first = first.trim_matches([' ', '\t']);
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = first.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(DELTA_SECONDS_OVERFLOW_DURATION))
}

/// The response's age when it arrived (RFC 9111 §4.2.3, without the request-time correction:
/// the upstream hop is too short to matter at one-second resolution), at most 2^31 - 1 s.
pub fn initial_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    // In whole seconds, the resolution of `Date`: a `Date` of this very second is age 0.
    let apparent = http_date(resp, http::header::DATE)
        .and_then(|d| now.duration_since(d).ok())
        .map(|d| Duration::from_secs(d.as_secs()))
        .unwrap_or_default();
    age_value(resp)
        .unwrap_or_default()
        .max(apparent)
        .min(DELTA_SECONDS_OVERFLOW_DURATION)
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
    let Directives { cc, targeted } = directives(policy, resp);
    if cc.as_ref().is_some_and(|c| c.no_store() || c.private()) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    let no_cache = cc.as_ref().is_some_and(|c| c.no_cache());
    let has_validator = resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED);

    // Freshness lifetime: origin directives, then Expires (unless a targeted field applies:
    // RFC 9213 §2.1 ignores it then), then the route's ttl.
    let lifetime = cc
        .as_ref()
        .and_then(|c| c.fresh_duration())
        .or_else(|| {
            if targeted {
                return None;
            }
            resp.headers.get(http::header::EXPIRES)?;
            // An invalid or repeated Expires means "already expired" (RFC 9111 §5.3).
            let Some(at) = http_date(resp, http::header::EXPIRES) else {
                return Some(Duration::ZERO);
            };
            let base = http_date(resp, http::header::DATE).unwrap_or(now);
            Some(at.duration_since(base).unwrap_or_default())
        })
        .or(policy.ttl)
        // Longer counts as 2^31 - 1 s (RFC 9111 §1.2.2): `now + lifetime` never overflows.
        .map(|l| l.min(DELTA_SECONDS_OVERFLOW_DURATION));
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
    if !header.headers.contains_key(http::header::DATE) {
        // RFC 9110 §6.6.1: a recipient that caches a response without `Date` adds one. The
        // stored `Date` is what later freshness and age calculations (a 304's merge) start from.
        header
            .insert_header(http::header::DATE, httpdate::fmt_http_date(now))
            .expect("an HTTP date is a valid header value");
    }
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
    if !age.is_zero() {
        // Hits report the age the response had on arrival plus its time here. The epoch is
        // kept at or after 1970: Pingora serializes it as time since then, and an `Age` of
        // 2^31 s would otherwise reach before it and make the entry impossible to store.
        let epoch = now
            .checked_sub(age)
            .filter(|t| *t >= SystemTime::UNIX_EPOCH)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        meta.set_epoch_override(epoch);
    }
    RespCacheable::Cacheable(meta)
}

/// [`decide`] for a completion keyed on its POST body (`cache.key.body`): the route's `ttl`
/// and stale windows give the freshness, whatever the answer's `Cache-Control` says of it.
/// Providers send `no-cache` on their answers (addressed to browsers: a POST cannot be
/// revalidated anyway), and the operator asked for these answers to be kept; an explicit
/// `no-store` is still honoured, as are the route's statuses and `Set-Cookie` rule.
pub fn decide_completion(
    policy: &RoutePolicy,
    resp: &ResponseHeader,
    now: SystemTime,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    if !policy.statuses.contains(&resp.status.as_u16()) {
        return Uncacheable(NoCacheReason::Custom("status"));
    }
    if !policy.store_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    let Directives { cc, .. } = directives(policy, resp);
    if cc.as_ref().is_some_and(|c| c.no_store()) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    let Some(ttl) = policy.ttl.filter(|t| !t.is_zero()) else {
        return Uncacheable(NoCacheReason::Custom("no-freshness"));
    };
    let mut header = resp.clone();
    if !header.headers.contains_key(http::header::DATE) {
        header
            .insert_header(http::header::DATE, httpdate::fmt_http_date(now))
            .expect("an HTTP date is a valid header value");
    }
    let ttl = ttl.min(DELTA_SECONDS_OVERFLOW_DURATION);
    RespCacheable::Cacheable(CacheMeta::new(
        now + ttl,
        now,
        policy.stale_while_revalidate,
        policy.stale_if_error,
        header,
    ))
}

/// Fields of a `304` that do not update the stored response (RFC 9111 §3.2): the framing and
/// connection fields (`Content-Length` above all: a 304 describes no body, or says 0), the
/// content coding and range of the stored body (tollgate may have compressed it before storing
/// it, §3.2 lets caches keep such fields), and `Vary` (the stored entry is keyed by its
/// variance: Pingora keeps the old one over a 304 too).
const NOT_UPDATED_BY_304: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "content-encoding",
    "content-range",
    "vary",
];

/// The stored header updated by a `304 Not Modified` (RFC 9111 §4.3.4, §3.2): each field of the
/// 304 replaces all the stored values of that field, except [`NOT_UPDATED_BY_304`] and the fields
/// its `Connection` names. `stored` is Pingora's merge (`revalidate_merge_header`), which already
/// took `Cache-Control`, `CDN-Cache-Control`, `Expires`, `ETag` and `Cache-Tag` from the 304; this
/// takes the rest (a route's targeted field, `Last-Modified`, `Date`, custom fields...).
///
/// The freshness of the result is computed from the 304: its `Date` (or `now` when it has
/// none, RFC 9110 §6.6.1) and its `Age` (the stored `Age` described the old response and is
/// dropped when the 304 has none), so a revalidated entry is as fresh as the 304 says.
pub fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &ResponseHeader,
    now: SystemTime,
) -> ResponseHeader {
    let mut merged = stored.clone();
    let named_by_connection: Vec<String> = not_modified
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    merged.remove_header(&http::header::AGE);
    for name in not_modified.headers.keys() {
        let lower = name.as_str();
        if NOT_UPDATED_BY_304.contains(&lower) || named_by_connection.iter().any(|n| n == lower) {
            continue;
        }
        merged.remove_header(name);
        for value in not_modified.headers.get_all(name) {
            merged
                .append_header(name.clone(), value.clone())
                .expect("a received field is a valid field");
        }
    }
    if !not_modified.headers.contains_key(http::header::DATE) {
        merged
            .insert_header(http::header::DATE, httpdate::fmt_http_date(now))
            .expect("an HTTP date is a valid header value");
    }
    merged
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

    fn targeted(field: &str) -> RoutePolicy {
        RoutePolicy::new(&RouteCacheConfig {
            targeted_field: Some(field.into()),
            ..Default::default()
        })
    }

    #[test]
    fn age_is_the_first_member_and_saturates() {
        let age = |v: &str| age_value(&resp(200, &[("age", v)])).map(|d| d.as_secs());
        assert_eq!(age("30"), Some(30));
        assert_eq!(age("30, 5"), Some(30), "first member of a list");
        assert_eq!(age(" 7 ,9"), Some(7));
        assert_eq!(age("0010"), Some(10));
        let cap = u64::from(i32::MAX as u32);
        assert_eq!(
            age("2147483648"),
            Some(cap),
            "2^31 and above count as the cap"
        );
        assert_eq!(age("99999999999999999999999"), Some(cap), "past u64 too");
        for bad in ["", "-1", "+5", "1.5", "abc", " , 3"] {
            assert_eq!(age(bad), None, "{bad:?} is ignored");
        }
        let twice = resp(200, &[("age", "12"), ("age", "40")]);
        assert_eq!(
            age_value(&twice),
            Some(Duration::from_secs(12)),
            "first line"
        );
    }

    #[test]
    fn huge_ages_are_stored_stale_and_serializable() {
        let now = SystemTime::now();
        let p = policy(None, 0, 0);
        for age in [
            "2147483648",
            "18446744073709551615",
            "99999999999999999999999",
        ] {
            let m = meta(decide(
                &p,
                &resp(
                    200,
                    &[
                        ("cache-control", "max-age=60"),
                        ("age", age),
                        ("etag", "\"x\""),
                    ],
                ),
                now,
            ));
            assert!(!m.is_fresh(now), "Age {age}: stale on arrival");
            assert!(m.epoch() >= SystemTime::UNIX_EPOCH);
            m.serialize()
                .unwrap_or_else(|e| panic!("Age {age}: the meta must be storable: {e}"));
        }
        let m = meta(decide(
            &p,
            &resp(200, &[("cache-control", "max-age=99999999999")]),
            now,
        ));
        assert_eq!(
            fresh_secs(&m, now),
            i64::from(i32::MAX),
            "lifetime capped at 2^31 - 1 s"
        );
    }

    #[test]
    fn targeted_fields_take_precedence_over_cache_control() {
        let now = SystemTime::now();
        let plain = policy(Some(60), 0, 0);
        let p = targeted("Tollgate-Cache-Control");
        let r = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=30"),
            ],
        );
        assert_eq!(
            fresh_secs(&meta(decide(&plain, &r, now)), now),
            30,
            "CDN-Cache-Control"
        );
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "max-age=30"),
                ("tollgate-cache-control", "max-age=50"),
            ],
        );
        assert_eq!(
            fresh_secs(&meta(decide(&p, &r, now)), now),
            50,
            "the route's field first"
        );
        assert_eq!(
            fresh_secs(&meta(decide(&plain, &r, now)), now),
            30,
            "a field the route does not name changes nothing"
        );
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "no-store"),
            ],
        );
        assert_eq!(reason(decide(&plain, &r, now)), "origin-no-store");
        // Empty, or nothing a directive can be read from: as if absent.
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("tollgate-cache-control", ""),
            ],
        );
        assert_eq!(fresh_secs(&meta(decide(&p, &r, now)), now), 10);
        // A targeted field makes Expires count for nothing either (RFC 9213 §2.1).
        let exp = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let r = resp(
            200,
            &[("expires", &exp), ("cdn-cache-control", "must-revalidate")],
        );
        assert_eq!(
            fresh_secs(&meta(decide(&plain, &r, now)), now),
            60,
            "route ttl"
        );
        let r = resp(
            200,
            &[
                ("cache-control", "public"),
                ("cdn-cache-control", "max-age=5"),
            ],
        );
        assert!(
            !shareable_when_authorized(&plain, &r),
            "CDN-Cache-Control decides"
        );
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", "public"),
            ],
        );
        assert!(shareable_when_authorized(&plain, &r));
    }

    #[test]
    fn authorized_responses_need_public_s_maxage_or_must_revalidate() {
        let p = policy(Some(60), 0, 0);
        let ok = |cc: &str| shareable_when_authorized(&p, &resp(200, &[("cache-control", cc)]));
        assert!(ok("public"));
        assert!(ok("s-maxage=10"));
        assert!(ok("max-age=10, must-revalidate"));
        assert!(!ok("max-age=10"));
        assert!(!shareable_when_authorized(&p, &resp(200, &[])));
    }

    #[test]
    fn a_304_updates_every_field_but_framing_and_sets_the_freshness() {
        let now = SystemTime::now();
        let old = httpdate::fmt_http_date(now - Duration::from_secs(600));
        let stored = resp(
            200,
            &[
                ("date", &old),
                ("age", "10"),
                ("cache-control", "max-age=60"),
                ("content-length", "13"),
                ("content-encoding", "gzip"),
                ("content-type", "text/plain"),
                ("etag", "\"v1\""),
                ("x-version", "1"),
                ("x-kept", "yes"),
                ("vary", "accept-encoding"),
            ],
        );
        let not_modified = resp(
            304,
            &[
                ("cache-control", "max-age=60"),
                ("content-length", "0"),
                ("content-encoding", "br"),
                ("vary", "x-other"),
                ("x-version", "2"),
                ("x-version", "2b"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("link", "</a>; rel=preload"),
            ],
        );
        let merged = merge_not_modified(&stored, &not_modified, now);
        let h = |n: &str| {
            merged
                .headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(merged.status, 200);
        assert_eq!(
            h("x-version"),
            ["2", "2b"],
            "each field of the 304 replaces"
        );
        assert_eq!(h("link"), ["</a>; rel=preload"], "new fields are added");
        assert_eq!(h("x-kept"), ["yes"], "fields the 304 lacks stay");
        assert_eq!(h("content-length"), ["13"], "framing stays");
        assert_eq!(
            h("content-encoding"),
            ["gzip"],
            "the stored body's coding stays"
        );
        assert_eq!(h("vary"), ["accept-encoding"]);
        assert!(
            h("x-hop").is_empty() && h("connection").is_empty(),
            "hop-by-hop"
        );
        assert!(
            h("age").is_empty(),
            "the old Age described the old response"
        );
        assert_eq!(h("date"), [httpdate::fmt_http_date(now)], "no Date: now");
        let m = meta(decide(&policy(None, 0, 0), &merged, now));
        assert_eq!(
            fresh_secs(&m, now),
            60,
            "fresh from the 304, not from the old Date"
        );
        assert!(m.age().as_secs() <= 1);
    }

    #[test]
    fn a_stored_response_always_has_a_date() {
        let now = SystemTime::now();
        let m = meta(decide(&policy(Some(60), 0, 0), &resp(200, &[]), now));
        assert_eq!(
            m.headers().get("date").unwrap(),
            httpdate::fmt_http_date(now).as_str()
        );
        let date = httpdate::fmt_http_date(now - Duration::from_secs(5));
        let m = meta(decide(
            &policy(Some(60), 0, 0),
            &resp(200, &[("date", &date)]),
            now,
        ));
        assert_eq!(
            m.headers().get("date").unwrap(),
            date.as_str(),
            "the origin's is kept"
        );
    }
}
