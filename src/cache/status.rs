//! How a response relates to the cache, told to the client: `Cache-Status` as RFC 9211
//! defines it (`tollgate; hit; ttl=42`, `tollgate; fwd=miss; stored`,
//! `tollgate; fwd=stale; fwd-status=200`) and the nginx-style `X-Cache-Status`.

use pingora_cache::CachePhase;
#[cfg(test)]
use pingora_cache::NoCacheReason;

/// What the cache did for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served fresh from cache.
    Hit,
    /// Served stale while one background request refreshes it (stale-while-revalidate).
    Updating,
    /// Served stale because the upstream failed (stale-if-error).
    Stale,
    /// Not in cache: fetched from the upstream.
    Miss,
    /// In cache but stale: fetched again in full (the upstream sent a new response).
    Expired,
    /// In cache but stale: the upstream confirmed it (304) and it was served from cache.
    Revalidated,
    /// The cache was not used for this request (method, `Authorization`, upgrade).
    Bypass,
}

impl Outcome {
    /// The `X-Cache-Status` value.
    pub fn x_cache_status(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Updating => "UPDATING",
            Outcome::Stale => "STALE",
            Outcome::Miss => "MISS",
            Outcome::Expired => "EXPIRED",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Bypass => "BYPASS",
        }
    }

    /// Lower-case label for metrics and the access log.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Updating => "updating",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Expired => "expired",
            Outcome::Revalidated => "revalidated",
            Outcome::Bypass => "bypass",
        }
    }
}

/// The metrics and access-log label of a hit served from the fleet's shared tier.
pub const SHARED_HIT: &str = "shared_hit";

/// The `Cache-Status` detail of a hit served from the fleet's shared tier.
pub const SHARED_DETAIL: &str = "redis";

/// Map Pingora's cache phase at response time to an outcome, with the reason when the
/// response was not stored. `enabled`: the cache was switched on for this request (a lookup
/// happened), so a disabled phase means "fetched, not stored" rather than "bypassed".
pub fn classify(phase: CachePhase, enabled: bool) -> (Outcome, Option<&'static str>) {
    match phase {
        CachePhase::Hit => (Outcome::Hit, None),
        CachePhase::StaleUpdating => (Outcome::Updating, None),
        CachePhase::Stale => (Outcome::Stale, None),
        CachePhase::Miss => (Outcome::Miss, None),
        CachePhase::Expired => (Outcome::Expired, None),
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => (Outcome::Revalidated, None),
        CachePhase::Disabled(r) if enabled => {
            (Outcome::Miss, Some(super::policy::reason_label(&r)))
        }
        _ => (Outcome::Bypass, None),
    }
}

/// What goes into one `Cache-Status` line.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Seconds of freshness left (negative: stale for that long); for responses from cache.
    pub ttl: Option<i64>,
    /// Status the upstream answered with, when the request went forward.
    pub fwd_status: Option<u16>,
    /// The response was stored.
    pub stored: bool,
    /// Why it was not stored, or what else happened.
    pub detail: Option<&'static str>,
}

/// The `Cache-Status` field value for an outcome (RFC 9211 §2).
pub fn cache_status(outcome: Outcome, r: &Report) -> String {
    let mut s = String::from("tollgate");
    let fwd = match outcome {
        Outcome::Hit | Outcome::Updating => {
            s.push_str("; hit");
            None
        }
        Outcome::Miss => Some("miss"),
        Outcome::Stale | Outcome::Expired | Outcome::Revalidated => Some("stale"),
        Outcome::Bypass => Some("bypass"),
    };
    if let Some(f) = fwd {
        s.push_str("; fwd=");
        s.push_str(f);
    }
    if let Some(code) = r.fwd_status {
        s.push_str(&format!("; fwd-status={code}"));
    }
    if let Some(ttl) = r.ttl {
        s.push_str(&format!("; ttl={ttl}"));
    }
    if r.stored {
        s.push_str("; stored");
    }
    let detail = match outcome {
        Outcome::Updating => Some("stale-while-revalidate"),
        Outcome::Stale => Some("stale-if-error"),
        _ => r.detail,
    };
    if let Some(d) = detail {
        s.push_str("; detail=");
        s.push_str(d);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9211_shapes() {
        let hit = Report {
            ttl: Some(42),
            ..Default::default()
        };
        assert_eq!(cache_status(Outcome::Hit, &hit), "tollgate; hit; ttl=42");
        let stored = Report {
            stored: true,
            fwd_status: Some(200),
            ..Default::default()
        };
        assert_eq!(
            cache_status(Outcome::Miss, &stored),
            "tollgate; fwd=miss; fwd-status=200; stored"
        );
        assert_eq!(
            cache_status(Outcome::Expired, &stored),
            "tollgate; fwd=stale; fwd-status=200; stored"
        );
        let sie = Report {
            ttl: Some(-3),
            fwd_status: Some(503),
            ..Default::default()
        };
        assert_eq!(
            cache_status(Outcome::Stale, &sie),
            "tollgate; fwd=stale; fwd-status=503; ttl=-3; detail=stale-if-error"
        );
        let no = Report {
            detail: Some("set-cookie"),
            ..Default::default()
        };
        assert_eq!(
            cache_status(Outcome::Miss, &no),
            "tollgate; fwd=miss; detail=set-cookie"
        );
    }

    #[test]
    fn phases() {
        assert_eq!(classify(CachePhase::Hit, true).0, Outcome::Hit);
        assert_eq!(
            classify(CachePhase::StaleUpdating, true).0,
            Outcome::Updating
        );
        assert_eq!(
            classify(CachePhase::Disabled(NoCacheReason::CacheLockTimeout), true),
            (Outcome::Miss, Some("lock-timeout"))
        );
        assert_eq!(
            classify(
                CachePhase::Disabled(NoCacheReason::Custom("set-cookie")),
                true
            ),
            (Outcome::Miss, Some("set-cookie"))
        );
        assert_eq!(
            classify(CachePhase::Disabled(NoCacheReason::NeverEnabled), false).0,
            Outcome::Bypass
        );
    }
}
