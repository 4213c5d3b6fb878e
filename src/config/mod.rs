//! Configuration: read a YAML file, interpolate `${ENV}`, parse, validate (collecting every
//! problem), compile into the [`RuntimeConfig`] the proxy serves from.
//!
//! `load(path)` is the one entry point; `tollgate check`, `tollgate run` and reloads all use it,
//! so what `check` accepts is exactly what `run` serves.

pub mod address;
pub mod compile;
pub mod error;
pub mod interpolate;
pub mod locate;
pub mod model;
pub mod parse;
pub mod startup;
pub mod units;
pub mod validate;

pub use compile::{Route, RuntimeConfig};
pub use error::{ConfigError, ConfigErrors};
pub use model::Config;
pub use startup::{ClientLimits, ConnectionLimits, Startup};

/// The largest `request_buffering`: Pingora keeps at most this much of a request body to send
/// (its retry buffer), and a body read before the upstream is contacted is sent from there.
pub const MAX_REQUEST_BUFFERING: u64 = 64 * 1024;

use std::path::Path;

/// Read, interpolate from the process environment, parse, validate and compile a config file.
pub fn load(path: &Path) -> Result<RuntimeConfig, ConfigErrors> {
    load_replacing(path, None)
}

/// Like [`load`], for a config that replaces `running` (a reload): upstream endpoints that
/// stay the same keep their live state (circuit breakers, active health verdicts), so an
/// unrelated edit does not send traffic back to an endpoint known to be down.
pub fn load_replacing(
    path: &Path,
    running: Option<&RuntimeConfig>,
) -> Result<RuntimeConfig, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        ConfigErrors {
            origin: origin.clone(),
            errors: vec![ConfigError::file(format!("cannot read config file: {why}"))],
        }
    })?;
    load_str_replacing(&text, &origin, |name| std::env::var(name).ok(), running)
}

/// Like [`load`] on text already in memory; `env` looks variables up (tests pass their own).
pub fn load_str(
    text: &str,
    origin: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RuntimeConfig, ConfigErrors> {
    load_str_replacing(text, origin, env, None)
}

/// [`load_str`] for a config that replaces `running` (see [`load_replacing`]).
pub fn load_str_replacing(
    text: &str,
    origin: &str,
    env: impl Fn(&str) -> Option<String>,
    running: Option<&RuntimeConfig>,
) -> Result<RuntimeConfig, ConfigErrors> {
    let checked = Checked::new(text, env);
    match checked.parsed {
        Some(p) if checked.errors.is_empty() => compile::compile(p.config, running)
            .map_err(|errors| located(errors, &checked.index, origin)),
        _ => Err(located(checked.errors, &checked.index, origin)),
    }
}

/// Interpolation, YAML and validation only: every problem [`load_str`] would report before
/// compiling (which resolves host names and builds TLS connectors). The fuzzer's way in for
/// files whose compile step would reach the network.
pub fn validate_str(
    text: &str,
    origin: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigErrors> {
    let checked = Checked::new(text, env);
    if checked.errors.is_empty() {
        Ok(())
    } else {
        Err(located(checked.errors, &checked.index, origin))
    }
}

/// A file's text interpolated, parsed and validated, with where each YAML path is.
struct Checked {
    parsed: Option<parse::Parsed>,
    errors: Vec<ConfigError>,
    index: locate::LocationIndex,
}

impl Checked {
    fn new(text: &str, env: impl Fn(&str) -> Option<String>) -> Checked {
        let (text, mut errors, env_lines) = interpolate::interpolate(text, env);
        let parsed = parse::parse(&text, &mut errors);
        let index = locate::LocationIndex::build(&text);
        if let Some(p) = &parsed {
            // A value came from the environment when it is exactly a value substituted on its
            // line.
            let from_env = |path: &str, value: &str| {
                index.line_of(path).is_some_and(|l| {
                    env_lines
                        .iter()
                        .any(|(line, v)| *line == l && v.trim() == value.trim())
                })
            };
            validate::validate(p, &from_env, &mut errors);
        }
        Checked {
            parsed,
            errors,
            index,
        }
    }
}

/// Errors with their line (found from their YAML path), in file order.
fn located(
    mut errors: Vec<ConfigError>,
    index: &locate::LocationIndex,
    origin: &str,
) -> ConfigErrors {
    for e in &mut errors {
        if e.line.is_none() && !e.path.is_empty() {
            e.line = index.line_of(&e.path);
        }
    }
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    ConfigErrors {
        origin: origin.to_string(),
        errors,
    }
}

impl RuntimeConfig {
    /// One line for logs and `tollgate check`: what this config serves.
    pub fn summary(&self) -> String {
        format!(
            "{} route{}, {} upstream group{}, listening on {}, admin on {}",
            self.routes.len(),
            if self.routes.len() == 1 { "" } else { "s" },
            self.upstreams.len(),
            if self.upstreams.len() == 1 { "" } else { "s" },
            self.startup
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.startup.admin_listen
        ) + &match (&self.startup.redis, self.limit_store.shared) {
            (Some(r), true) => format!(", rate limits shared in redis {}", r.describe()),
            (None, true) => ", rate limits in redis (not connected: restart to connect)".into(),
            (_, false) => String::new(),
        } + match (&self.startup.redis, &self.startup.cache) {
            (Some(_), c) if c.shared && c.shared_fill_lock => {
                ", cache shared in redis (fill lock on), purges fleet-wide"
            }
            (Some(_), c) if c.shared => ", cache shared in redis, purges fleet-wide",
            (Some(_), c) if c.purge_bus => ", cache purges fleet-wide",
            _ => "",
        }
    }
}
