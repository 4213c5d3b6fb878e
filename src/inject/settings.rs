//! The injector's settings: what the sidecar it adds looks like (image, ports, resources, the
//! default ConfigMap, the shutdown budget). Read from a YAML file (`--settings`; the Helm chart
//! renders it from its `injection:` values); every key is optional. Pod annotations
//! (`tollgate.io/*`, see [`super::mutate`]) override some of them per pod.

use serde::Deserialize;
use std::path::Path;

/// The version the injector stamps on the pods it changes (`tollgate.io/injected`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Injector settings. Defaults match the Helm chart's `values.yaml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The sidecar's image.
    pub image: String,
    /// Its `imagePullPolicy`.
    pub image_pull_policy: String,
    /// `TOLLGATE_LOG` of the sidecar.
    pub log_level: String,
    /// The sidecar's proxy listener (container port `tollgate`, the Service's target).
    pub proxy_port: u16,
    /// Its admin listener (container port `tollgate-admin`: probes and metrics).
    pub admin_port: u16,
    /// The ConfigMap holding `tollgate.yaml` when a pod names none (`tollgate.io/config`).
    pub config_map: String,
    /// The sidecar's `resources`, as Kubernetes writes them.
    pub resources: serde_json::Value,
    /// tollgate's drain budget: `server.grace_period` + `server.shutdown_timeout` of the config it
    /// runs (5 s + 10 s by default). Added to the pod's `terminationGracePeriodSeconds`.
    pub drain_seconds: u32,
    /// A `preStop` sleep added to the app container (when it has no `preStop`), so that the app
    /// keeps serving while the endpoints controller takes the pod out of its Services. `0`: none.
    pub app_pre_stop_sleep_seconds: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            image: format!("ghcr.io/tollgate/tollgate:{VERSION}"),
            image_pull_policy: "IfNotPresent".into(),
            log_level: "info".into(),
            proxy_port: 8080,
            admin_port: 9901,
            config_map: "tollgate-config".into(),
            resources: serde_json::json!({
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"memory": "256Mi"},
            }),
            drain_seconds: 15,
            app_pre_stop_sleep_seconds: 5,
        }
    }
}

impl Settings {
    /// Reads and checks a settings file. Errors name the file and the key.
    pub fn load(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Settings::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks settings from YAML text (empty text: the defaults).
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings = if text.trim().is_empty() {
            Settings::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                }
            })?
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), String> {
        if self.image.trim().is_empty() {
            return Err("image: must not be empty".into());
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            return Err(format!(
                "image_pull_policy: {:?} is not Always, IfNotPresent or Never",
                self.image_pull_policy
            ));
        }
        for (key, port) in [
            ("proxy_port", self.proxy_port),
            ("admin_port", self.admin_port),
        ] {
            if port == 0 {
                return Err(format!("{key}: must be 1..=65535"));
            }
        }
        if self.proxy_port == self.admin_port {
            return Err(format!(
                "admin_port: {} is also proxy_port; they must differ",
                self.admin_port
            ));
        }
        if !is_dns_label_or_subdomain(&self.config_map) {
            return Err(format!(
                "config_map: {:?} is not a valid ConfigMap name (lowercase letters, digits, '-' and '.')",
                self.config_map
            ));
        }
        if !self.resources.is_object() {
            return Err("resources: must be a mapping (requests, limits)".into());
        }
        Ok(())
    }
}

/// A Kubernetes object name (RFC 1123 subdomain): what a ConfigMap name must be.
pub fn is_dns_label_or_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults_and_keys_are_checked() {
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
        let s = Settings::parse("proxy_port: 8081\nconfig_map: edge-config\n").unwrap();
        assert_eq!((s.proxy_port, s.config_map.as_str()), (8081, "edge-config"));
        let e = Settings::parse("proxy_port: 9901\n").unwrap_err();
        assert!(e.contains("admin_port: 9901 is also proxy_port"), "{e}");
        let e = Settings::parse("proxy_prot: 1\n").unwrap_err();
        assert!(e.contains("unknown field `proxy_prot`"), "{e}");
        let e = Settings::parse("image_pull_policy: Sometimes\n").unwrap_err();
        assert!(e.starts_with("image_pull_policy:"), "{e}");
        let e = Settings::parse("config_map: My_Config\n").unwrap_err();
        assert!(e.starts_with("config_map:"), "{e}");
        let e = Settings::parse("admin_port: 70000\n").unwrap_err();
        assert!(e.starts_with("admin_port:"), "{e}");
    }
}
