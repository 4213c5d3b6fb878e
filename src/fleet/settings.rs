//! `redis:` compiled: where the fleet's Redis is and how patiently to talk to it. Passwords
//! stay inside: [`Settings`]' `Debug` and [`redact`] print URLs with the password masked, so a
//! log line, `check` output or error can never carry one.

use crate::config::model::RedisConfig;
use std::time::Duration;

/// Where the fleet's Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis (`redis://` or `rediss://`).
    Single(String),
    /// A Redis Cluster, by some of its nodes.
    Cluster(Vec<String>),
}

/// The fleet's Redis and how to use it.
#[derive(Clone, PartialEq)]
pub struct Settings {
    /// The server(s).
    pub target: Target,
    /// PEM CA file trusted for `rediss://` (besides none: the system's store when absent).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// One connection attempt's limit.
    pub connect_timeout: Duration,
    /// One command's limit (a decision waits no longer for Redis).
    pub command_timeout: Duration,
    /// Multiplexed connections (standalone; a Cluster keeps one per node).
    pub connections: usize,
    /// Refuse to start when Redis cannot be reached.
    pub required: bool,
    /// First part of every key.
    pub key_prefix: String,
    /// Heartbeat (fleet size, recovery probe) period.
    pub heartbeat_interval: Duration,
    /// Consecutive failures that start a backoff.
    pub failures_before_backoff: u32,
    /// How long Redis is not asked after them.
    pub backoff: Duration,
}

impl Settings {
    /// Compile a validated `redis:` section.
    pub fn new(c: &RedisConfig) -> Settings {
        let target = match &c.url {
            Some(url) => Target::Single(url.clone()),
            None => Target::Cluster(c.cluster.clone()),
        };
        Settings {
            target,
            tls_ca_file: c.tls_ca_file.as_ref().map(Into::into),
            connect_timeout: c.connect_timeout.0,
            command_timeout: c.command_timeout.0,
            connections: c.connections.max(1),
            required: c.required,
            key_prefix: c.key_prefix.clone(),
            heartbeat_interval: c.heartbeat_interval.0,
            failures_before_backoff: c.failures_before_backoff.max(1),
            backoff: c.backoff.0,
        }
    }

    /// Where Redis is, for logs: URLs with their password masked.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Single(url) => redact(url),
            Target::Cluster(seeds) => format!(
                "cluster [{}]",
                seeds
                    .iter()
                    .map(|s| redact(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.describe())
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("connections", &self.connections)
            .field("required", &self.required)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// `url` with the password of its userinfo replaced by `***` (`redis://:***@host:6379`). Text
/// that does not look like a URL with userinfo is returned whole.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // Userinfo ends at the last `@` before the path: a password may itself contain `@`.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host` is how some clients write a bare password.
        None if !userinfo.is_empty() => "***".to_string(),
        None => String::new(),
    };
    format!("{scheme}://{masked}@{}", &rest[at + 1..])
}

/// Why a Redis URL is not usable, without repeating the URL (it may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not a URL: write `redis://host:port` (or `rediss://` for TLS)".into());
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "unsupported scheme `{scheme}`: use `redis://` or `rediss://` (TLS)"
        ));
    }
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host_port = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..authority_end],
        None => &rest[..authority_end],
    };
    if host_port.is_empty() {
        return Err("the URL names no host: write `redis://host:port`".into());
    }
    let db = rest[authority_end..].trim_start_matches('/');
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(format!(
            "the path must be a database number (`/0`), not `/{db}`"
        ));
    }
    // The Redis client's own parser has the last word (ports, IPv6 brackets, escapes); its
    // message may quote the URL, so only its kind is reported.
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "the Redis client cannot use this URL ({:?}): check host, port and escaping",
            e.kind()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact("rediss://tollgate:p@ss@r.example:6380"),
            "rediss://tollgate:***@r.example:6380"
        );
        assert_eq!(redact("redis://s3cret@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let s = Settings::new(&RedisConfig {
            url: Some("redis://u:topsecret@h:1".into()),
            ..RedisConfig::default()
        });
        assert!(!format!("{s:?}").contains("topsecret"));
    }

    #[test]
    fn urls_are_checked_without_quoting_them() {
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_url("rediss://:pw@r.example:6380/2").is_ok());
        let e = check_url("http://:topsecret@h:1").unwrap_err();
        assert!(
            e.contains("unsupported scheme `http`") && !e.contains("topsecret"),
            "{e}"
        );
        assert!(check_url("redis://:x@/0").is_err());
        assert!(check_url("redis://h:1/cache")
            .unwrap_err()
            .contains("database number"));
        assert!(check_url("localhost:6379").is_err());
    }
}
