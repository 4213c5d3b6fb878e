//! Human-friendly units used in the YAML schema: durations written `250ms`, `30s`, `5m`, `1h`.
//!
//! A bare number is rejected on purpose: `timeout: 30` is ambiguous (seconds? ms?) and the
//! 3 a.m. reader of a config file should never have to guess.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration from the config file. Deserializes from strings like `30s`, `5m`, `250ms`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Build from whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }
    /// Build from milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        ConfigDuration(Duration::from_millis(ms))
    }
    /// The inner [`Duration`].
    pub fn get(self) -> Duration {
        self.0
    }
}

/// Parse `30s`, `5m`, `250ms`, `1h30m`, `0s`. Returns a message fit for a config error.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration: write a number and a unit, e.g. `30s`".into());
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "invalid duration `{t}`: a unit is required (ms, s, m, h), e.g. `{t}s`"
        ));
    }
    humantime::parse_duration(t).map_err(|_| {
        format!("invalid duration `{t}`: expected a number and a unit (ms, s, m, h), e.g. `30s` or `5m`")
    })
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `30s`, `5m` or `250ms`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: a unit is required (ms, s, m, h), e.g. `{v}s`"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "invalid duration `{v}`: a unit is required (ms, s, m, h), e.g. `{v}s`"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_bare_numbers_and_garbage() {
        assert!(parse_duration("30")
            .unwrap_err()
            .contains("unit is required"));
        assert!(parse_duration("5x")
            .unwrap_err()
            .contains("invalid duration `5x`"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
    }
}
