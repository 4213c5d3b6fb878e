//! The fleet: replicas of tollgate that share state through one Redis (standalone or Cluster).
//!
//! Redis is the one shared engine: no gossip or consensus of our own. This module is the
//! replica's side of it, whatever is shared:
//! - [`settings`]: `redis:` compiled, with passwords kept out of every log line;
//! - [`link`]: the connections, the timeout of every call, failure counting and backoff;
//! - [`heartbeat`]: the replica announcing itself, the fleet size, the recovery probe;
//! - [`keys`]: API keys provisioned in Redis, cached per replica.
//!
//! The rate limiter's Redis store ([`crate::ratelimit::redis`]) calls Redis through a [`Link`].

pub mod heartbeat;
pub mod keys;
pub mod link;
pub mod settings;

pub use heartbeat::Heartbeat;
pub use link::{Link, StoreError};
pub use settings::Settings;
