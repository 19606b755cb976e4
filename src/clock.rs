//! Wall-clock time, the one place that reads it. Everything that waits or measures uses tokio
//! time (so tests can pause it); only what is shown or stored for people and for other replicas
//! — pin creation times, `loaded_at`, expiry stamps shared through Redis — is wall-clock.
//!
//! A leaf: imports nothing from the crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
