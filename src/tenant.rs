//! Who is calling: an API key (`Authorization: Bearer` or a named header) mapped to a tenant, a
//! trusted tenant header, or the client IP for anonymous callers.
//!
//! Keys are looked up by their SHA-256 digest: the config holds only digests (or plain keys
//! from the environment, hashed at load), and no key is ever logged.

use crate::config::model::{self, IdentityConfig, TenantConfig, TierConfig, UnknownKey};
use crate::fleet::keys::{KeyCacheSettings, KeyRecord};
use crate::ratelimit::tokens::TokenLimits;
use crate::ratelimit::Limits;
use http::header::HeaderName;
use indexmap::IndexMap;
use ipnet::IpNet;
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A compiled tier.
#[derive(Debug)]
pub struct Tier {
    /// Tier name (metrics label).
    pub name: Arc<str>,
    /// Its limits.
    pub limits: Limits,
    /// Never refuse, only count and add headers.
    pub shadow: bool,
    /// Its LLM token budgets.
    pub tokens: TokenLimits,
}

/// A compiled tenant: its tier with its own overrides applied.
#[derive(Debug)]
pub struct Tenant {
    /// Tenant id.
    pub id: Arc<str>,
    /// Limiter subject (`t:<id>`).
    pub subject: Arc<str>,
    /// Its tier.
    pub tier: Arc<Tier>,
    /// Effective limits (tier + overrides).
    pub limits: Limits,
    /// Effective shadow mode.
    pub shadow: bool,
    /// Effective token budgets (tier + overrides).
    pub tokens: TokenLimits,
}

/// The identified caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Limiter subject: `t:<tenant>`, `h:<header tenant>` or `ip:<address>`.
    pub subject: Arc<str>,
    /// Tenant id when known (configured tenant or trusted header).
    pub tenant: Option<Arc<str>>,
    /// The tier, when one applies; `None`: not rate limited.
    pub tier: Option<Arc<Tier>>,
    /// Effective limits of that tier for this caller.
    pub limits: Option<Limits>,
    /// Shadow mode for this caller.
    pub shadow: bool,
    /// Token budgets of this caller (none when no tier applies).
    pub tokens: TokenLimits,
}

/// The caller presented an API key that no tenant owns, and config says to reject it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownApiKey;

/// Where a caller's identity may come from, in `identity.order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `Authorization: Bearer` and `api_key_header`.
    ApiKey,
    /// `tenant_header`, when trusted.
    TenantHeader,
}

/// Compiled `identity:` plus the tenant index.
#[derive(Debug)]
pub struct Identity {
    order: Vec<Source>,
    bearer: bool,
    api_key_header: Option<HeaderName>,
    /// Set only when the header is trusted.
    tenant_header: Option<HeaderName>,
    reject_unknown: bool,
    anonymous: Option<Arc<Tier>>,
    header_tenant_tier: Option<Arc<Tier>>,
    trusted_proxies: Vec<IpNet>,
    by_key: HashMap<[u8; 32], Arc<Tenant>>,
    by_id: HashMap<String, Arc<Tenant>>,
    /// Tiers by name (for keys found in Redis).
    tiers: HashMap<String, Arc<Tier>>,
    /// `identity.key_store: redis`: keys the file does not have are looked up there.
    key_cache: Option<KeyCacheSettings>,
}

/// A tenant found by a key the file does not hold (in the Redis key store), with that key's
/// digest.
pub type ExtraKey = ([u8; 32], Arc<Tenant>);

/// SHA-256 of a key, as bytes.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// SHA-256 of a key, as lowercase hex (what `sha256:` entries hold).
pub fn key_digest_hex(key: &str) -> String {
    hex::encode(key_digest(key))
}

/// `10.0.0.0/8` or a bare address (`10.1.2.3`, a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Compile validated `tiers:`, `tenants:` and `identity:`: the tiers by name, and the
/// identity that maps callers to tenants and tiers.
pub fn compile(
    identity: &IdentityConfig,
    tiers: &IndexMap<String, TierConfig>,
    tenants: &IndexMap<String, TenantConfig>,
) -> (HashMap<String, Arc<Tier>>, Identity) {
    let tiers: HashMap<String, Arc<Tier>> = tiers
        .iter()
        .map(|(name, t)| {
            let tier = Tier {
                name: name.as_str().into(),
                limits: Limits {
                    rps: t.rps,
                    burst: t.burst,
                    daily: t.daily.get(),
                },
                shadow: t.shadow,
                tokens: TokenLimits {
                    per_minute: t.tokens_per_minute,
                    per_day: t.tokens_per_day,
                },
            };
            (name.clone(), Arc::new(tier))
        })
        .collect();
    let tenants = tenants
        .iter()
        .map(|(id, t)| {
            let tier = tiers[&t.tier].clone();
            let over = model::LimitsOverride {
                rps: t.rps,
                burst: t.burst,
                daily: t.daily,
            };
            let tenant = Arc::new(Tenant {
                id: id.as_str().into(),
                subject: format!("t:{id}").into(),
                limits: tier.limits.overridden(&over),
                shadow: t.shadow.unwrap_or(tier.shadow),
                tokens: TokenLimits {
                    per_minute: t.tokens_per_minute.or(tier.tokens.per_minute),
                    per_day: t.tokens_per_day.or(tier.tokens.per_day),
                },
                tier,
            });
            let keys = t
                .api_keys
                .iter()
                .map(|k| match k.strip_prefix("sha256:") {
                    Some(h) => {
                        let mut d = [0u8; 32];
                        hex::decode_to_slice(h, &mut d).expect("validated");
                        d
                    }
                    None => key_digest(k.trim()),
                })
                .collect();
            (tenant, keys)
        })
        .collect();
    let identity = Identity::new(identity, &tiers, tenants);
    (tiers, identity)
}

impl Identity {
    /// Compile from config; `tiers` and `tenants` are already compiled, validation has run.
    pub fn new(
        cfg: &IdentityConfig,
        tiers: &HashMap<String, Arc<Tier>>,
        tenants: Vec<(Arc<Tenant>, Vec<[u8; 32]>)>,
    ) -> Self {
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (t, keys) in tenants {
            for k in keys {
                by_key.insert(k, t.clone());
            }
            by_id.insert(t.id.to_string(), t);
        }
        let anonymous = cfg
            .anonymous_tier
            .as_ref()
            .and_then(|t| tiers.get(t).cloned());
        Identity {
            order: cfg
                .order
                .iter()
                .map(|s| match s {
                    model::IdentitySource::ApiKey => Source::ApiKey,
                    model::IdentitySource::TenantHeader => Source::TenantHeader,
                })
                .collect(),
            bearer: cfg.bearer,
            api_key_header: cfg
                .api_key_header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            tenant_header: if cfg.trust_tenant_header {
                HeaderName::from_bytes(cfg.tenant_header.as_bytes()).ok()
            } else {
                None
            },
            reject_unknown: cfg.unknown_key == UnknownKey::Reject,
            header_tenant_tier: cfg
                .header_tenant_tier
                .as_ref()
                .and_then(|t| tiers.get(t).cloned())
                .or_else(|| anonymous.clone()),
            anonymous,
            trusted_proxies: cfg
                .trusted_proxies
                .iter()
                .filter_map(|c| parse_cidr(c))
                .collect(),
            by_key,
            by_id,
            tiers: tiers.clone(),
            key_cache: (cfg.key_store == model::KeyStoreKind::Redis).then_some(KeyCacheSettings {
                ttl: cfg.key_cache_ttl.0,
                negative_ttl: cfg.key_negative_ttl.0,
                size: cfg.key_cache_size,
                lookups_per_second: cfg.key_lookups_per_second,
            }),
        }
    }

    /// With `identity.key_store: redis`: the digest of an API key this request presents that
    /// the file does not hold (to look up in Redis), and the cache settings of such lookups.
    pub fn key_to_look_up(&self, req: &RequestHeader) -> Option<([u8; 32], KeyCacheSettings)> {
        let settings = self.key_cache?;
        if !self.order.contains(&Source::ApiKey) {
            return None;
        }
        let digest = key_digest(self.presented_key(req)?);
        (!self.by_key.contains_key(&digest)).then_some((digest, settings))
    }

    /// The tenant of a key record from Redis: its tier (which must exist in this config) with
    /// the record's overrides. A tenant of the file with the same id keeps its buckets: the
    /// subject is `t:<id>` either way.
    pub fn tenant_from_record(&self, r: &KeyRecord) -> Option<Arc<Tenant>> {
        let Some(tier) = self.tiers.get(&r.tier) else {
            // Once a minute at most: every request with that key comes here.
            static LAST_WARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = crate::ratelimit::unix_nanos_now() / 1_000_000_000;
            let last = LAST_WARNED.load(std::sync::atomic::Ordering::Relaxed);
            if now < last + 60 {
                return None;
            }
            LAST_WARNED.store(now, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                "an API key of tenant `{}` in Redis names tier `{}`, which this config does not have: refused as unknown",
                r.tenant,
                r.tier
            );
            return None;
        };
        let limits = tier.limits.overridden(&model::LimitsOverride {
            rps: r.rps,
            burst: r.burst,
            daily: r.daily.map(model::Daily::Limit),
        });
        Some(Arc::new(Tenant {
            id: r.tenant.as_str().into(),
            subject: format!("t:{}", r.tenant).into(),
            tier: tier.clone(),
            limits,
            shadow: r.shadow.unwrap_or(tier.shadow),
            tokens: tier.tokens,
        }))
    }

    /// A configured tenant by id (for `tollgate explain --tenant`).
    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    /// The tenant owning a plain key (for `tollgate explain --key`).
    pub fn tenant_by_key(&self, key: &str) -> Option<&Arc<Tenant>> {
        self.by_key.get(&key_digest(key))
    }

    /// The anonymous tier, if any.
    pub fn anonymous_tier(&self) -> Option<&Arc<Tier>> {
        self.anonymous.as_ref()
    }

    /// The API key a request presents, if any.
    fn presented_key<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        if self.bearer {
            if let Some(v) = req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            {
                // The auth scheme is case-insensitive (RFC 9110 §11.1).
                if let Some((scheme, k)) = v.split_once(' ') {
                    let k = k.trim();
                    if scheme.eq_ignore_ascii_case("bearer") && !k.is_empty() {
                        return Some(k);
                    }
                }
            }
        }
        let h = self.api_key_header.as_ref()?;
        req.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    }

    fn known(t: &Arc<Tenant>) -> Caller {
        Caller {
            subject: t.subject.clone(),
            tenant: Some(t.id.clone()),
            tier: Some(t.tier.clone()),
            limits: Some(t.limits),
            shadow: t.shadow,
            tokens: t.tokens,
        }
    }

    /// Whether any caller can be identified as a tenant (tenants with keys, or a trusted tenant
    /// header). Without, every caller is anonymous and tenant-scoped caches are shared.
    pub fn identifies_tenants(&self) -> bool {
        !self.by_key.is_empty() || self.tenant_header.is_some() || self.key_cache.is_some()
    }

    /// Identify the caller of a request from `peer`, the TCP peer address.
    /// `extra`: a tenant found in the Redis key store for the presented key, if any.
    pub fn resolve(
        &self,
        req: &RequestHeader,
        peer: Option<IpAddr>,
        extra: Option<&ExtraKey>,
    ) -> Result<Caller, UnknownApiKey> {
        for source in &self.order {
            match source {
                Source::ApiKey => {
                    if let Some(key) = self.presented_key(req) {
                        let digest = key_digest(key);
                        let found = self
                            .by_key
                            .get(&digest)
                            .or_else(|| extra.filter(|(d, _)| *d == digest).map(|(_, t)| t));
                        match found {
                            Some(t) => return Ok(Self::known(t)),
                            None if self.reject_unknown => return Err(UnknownApiKey),
                            None => {}
                        }
                    }
                }
                Source::TenantHeader => {
                    let Some(h) = &self.tenant_header else {
                        continue;
                    };
                    let Some(id) = req
                        .headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::trim)
                    else {
                        continue;
                    };
                    if id.is_empty() || id.len() > 128 {
                        continue;
                    }
                    if let Some(t) = self.by_id.get(id) {
                        return Ok(Self::known(t));
                    }
                    let tier = self.header_tenant_tier.clone();
                    return Ok(Caller {
                        subject: format!("h:{id}").into(),
                        tenant: Some(id.into()),
                        limits: tier.as_ref().map(|t| t.limits),
                        shadow: tier.as_ref().is_some_and(|t| t.shadow),
                        tokens: tier.as_ref().map(|t| t.tokens).unwrap_or_default(),
                        tier,
                    });
                }
            }
        }
        let ip = self.client_ip(req, peer);
        let tier = self.anonymous.clone();
        Ok(Caller {
            subject: match ip {
                Some(ip) => {
                    let mut s = String::with_capacity(18);
                    s.push_str("ip:");
                    crate::textfmt::push_ip(&mut s, ip);
                    s.into()
                }
                None => "ip:unknown".into(),
            },
            tenant: None,
            limits: tier.as_ref().map(|t| t.limits),
            shadow: tier.as_ref().is_some_and(|t| t.shadow),
            tokens: tier.as_ref().map(|t| t.tokens).unwrap_or_default(),
            tier,
        })
    }

    /// The client address: the TCP peer, or, when the peer is a trusted proxy, the nearest
    /// untrusted address in `X-Forwarded-For` (read right to left, as each proxy appends).
    /// IPv4 clients of a `[::]` listener arrive as `::ffff:a.b.c.d`: they are read as IPv4, so
    /// `127.0.0.1/32` in `trusted_proxies` and `ip:` keys mean the same thing on every listener.
    pub fn client_ip(&self, req: &RequestHeader, peer: Option<IpAddr>) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for value in req.headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(v) = value.to_str() else {
                return Some(client);
            };
            for hop in v.rsplit(',') {
                match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                    Ok(ip) => {
                        client = ip;
                        if !self.is_trusted(ip) {
                            return Some(ip);
                        }
                    }
                    Err(_) => return Some(client),
                }
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(trusted: &[&str]) -> Identity {
        let cfg = IdentityConfig {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..IdentityConfig::default()
        };
        Identity::new(&cfg, &HashMap::new(), Vec::new())
    }

    fn req(xff: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            r.append_header("x-forwarded-for", *v).unwrap();
        }
        r
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_from_trusted_peers_only() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let untrusted = identity(&[]);
        assert_eq!(
            untrusted.client_ip(&req(&["1.1.1.1"]), ip("127.0.0.1")),
            ip("127.0.0.1")
        );
        let trusted = identity(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(
            trusted.client_ip(&req(&["1.1.1.1"]), ip("127.0.0.1")),
            ip("1.1.1.1")
        );
        // Spoofed left part ignored: the nearest untrusted hop is the client.
        assert_eq!(
            trusted.client_ip(&req(&["6.6.6.6, 2.2.2.2, 10.1.1.1"]), ip("127.0.0.1")),
            ip("2.2.2.2")
        );
        // Several header lines: the last one was appended last.
        assert_eq!(
            trusted.client_ip(&req(&["6.6.6.6", "3.3.3.3"]), ip("127.0.0.1")),
            ip("3.3.3.3")
        );
        // Garbage stops the walk at the last good address.
        assert_eq!(
            trusted.client_ip(&req(&["junk, 10.2.2.2"]), ip("127.0.0.1")),
            ip("10.2.2.2")
        );
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let trusted = identity(&["127.0.0.1"]);
        let mapped = Some("::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            trusted.client_ip(&req(&["4.4.4.4"]), mapped),
            Some("4.4.4.4".parse().unwrap())
        );
        let plain = identity(&[]);
        assert_eq!(
            plain.client_ip(&req(&[]), mapped),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let id = identity(&[]);
        for v in ["Bearer k1", "bearer k1", "BEARER  k1 "] {
            let mut r = req(&[]);
            r.insert_header("authorization", v).unwrap();
            assert_eq!(id.presented_key(&r), Some("k1"), "{v}");
        }
        let mut r = req(&[]);
        r.insert_header("authorization", "Basic abc").unwrap();
        assert_eq!(id.presented_key(&r), None);
    }
}
