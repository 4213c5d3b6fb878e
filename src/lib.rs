//! tollgate: a sidecar reverse proxy on Pingora, driven by one validated YAML file.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests and benches use the same
//! entry points: [`config::load`] to read and validate a file, [`server::build_server`] to get a
//! runnable Pingora server.

pub mod admin;
pub mod admin_client;
pub mod cache;
pub mod clock;
pub mod compress;
pub mod config;
pub mod connections;
pub mod demo;
pub mod drain;
pub mod explain;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod inject;
pub mod keys_command;
pub mod llm;
pub mod memory;
pub mod observe;
pub mod origin_date;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod route;
pub mod server;
pub mod tenant;
pub mod textfmt;
pub mod trust_store;
pub mod upstream;

pub use server::build_server;
