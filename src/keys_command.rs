//! `tollgate keys add|revoke|list`: API keys provisioned in the fleet's Redis
//! (`identity.key_store: redis`), written by digest only: the plain key is printed once, at
//! `add --generate`, and never stored or logged.

use crate::config::RuntimeConfig;
use crate::fleet::keys::{self, KeyRecord};
use crate::fleet::Link;
use std::fmt::Write;

/// What to do.
pub enum Action {
    /// Store `record` for `key` (a plain key, or `None` to generate one).
    Add {
        /// The plain key; `None`: generate a random one and print it.
        key: Option<String>,
        /// Tenant, tier and overrides.
        record: KeyRecord,
    },
    /// Delete a key (plain, or `sha256:<hex digest>`).
    Revoke(String),
    /// Print every provisioned key by digest.
    List,
}

/// Run `action` against the `redis:` of `config`; the text to print, or an error message.
pub fn run(config: &RuntimeConfig, action: Action) -> Result<String, String> {
    let settings = config.startup.redis.clone().ok_or(
        "this config has no `redis:` section: `tollgate keys` writes to the fleet's Redis",
    )?;
    if let Action::Add { record, .. } = &action {
        check_record(record)?;
        if !config.tiers.contains_key(&record.tier) {
            let mut known: Vec<&str> = config.tiers.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(format!(
                "tier `{}` is not in this config (tiers: {})",
                record.tier,
                known.join(", ")
            ));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let where_ = settings.describe();
    rt.block_on(async move {
        let link = Link::new(settings);
        link.connect()
            .await
            .map_err(|e| format!("redis {where_} cannot be reached: {e}"))?;
        let fail = |e| format!("redis {where_}: {e}");
        match action {
            Action::Add { key, record } => {
                let (key, generated) = match key {
                    Some(k) => (k, false),
                    None => (generate_key()?, true),
                };
                let digest = crate::tenant::key_digest_hex(key.trim());
                keys::add(&link, &digest, &record).await.map_err(fail)?;
                let mut out = String::new();
                if generated {
                    let _ = writeln!(out, "key: {key}\n(shown once: it is stored only as its digest)");
                }
                let _ = writeln!(
                    out,
                    "added sha256:{digest} for tenant `{}` (tier `{}`)",
                    record.tenant, record.tier
                );
                Ok(out)
            }
            Action::Revoke(key) => {
                let digest = match key.strip_prefix("sha256:") {
                    Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        h.to_ascii_lowercase()
                    }
                    Some(_) => return Err("`sha256:` must be followed by 64 hex digits".into()),
                    None => crate::tenant::key_digest_hex(key.trim()),
                };
                match keys::revoke(&link, &digest).await.map_err(fail)? {
                    true => Ok(format!(
                        "revoked sha256:{digest}: replicas refuse it within `identity.key_cache_ttl`\n"
                    )),
                    false => Err(format!("no key sha256:{digest} in redis {where_}")),
                }
            }
            Action::List => {
                let all = keys::list(&link).await.map_err(fail)?;
                let mut out = String::new();
                for (digest, r) in &all {
                    let mut extra = String::new();
                    for (k, v) in [
                        ("rps", r.rps.map(|v| v.to_string())),
                        ("burst", r.burst.map(|v| v.to_string())),
                        ("daily", r.daily.map(|v| v.to_string())),
                        ("shadow", r.shadow.map(|v| v.to_string())),
                    ] {
                        if let Some(v) = v {
                            let _ = write!(extra, " {k}={v}");
                        }
                    }
                    let _ = writeln!(
                        out,
                        "sha256:{digest}  tenant={} tier={}{extra}",
                        r.tenant,
                        r.tier
                    );
                }
                let _ = writeln!(out, "{} key(s) in redis {where_}", all.len());
                Ok(out)
            }
        }
    })
}

/// A new random key: `tg_` and 32 bytes from the kernel's CSPRNG, in hex.
fn generate_key() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(format!("tg_{}", hex::encode(bytes)))
}

/// What `tollgate check` would refuse in a tenant, refused here too: a record the proxy would
/// answer 429 to forever is a mistake, not a policy.
fn check_record(r: &KeyRecord) -> Result<(), String> {
    if r.tenant.is_empty()
        || r.tenant.len() > 128
        || r.tenant.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err("--tenant must be 1 to 128 characters, without spaces".into());
    }
    if let Some(rps) = r.rps {
        if !(rps.is_finite() && rps > 0.0) {
            return Err(format!("--rps must be a number above 0 (found {rps})"));
        }
    }
    if r.burst == Some(0) {
        return Err("--burst must be at least 1".into());
    }
    Ok(())
}
